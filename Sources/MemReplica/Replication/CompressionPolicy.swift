/// Whether the next chunk's pages are worth compressing, from what was
/// measured on this stream: compress only while the link, not the sender,
/// is the bottleneck, the compressor outruns the link, and the content
/// compresses. Incompressible content is skipped but probed every
/// `probeInterval` chunks, so a change of content is noticed.
///
/// The link is measured, not guessed: over windows of `window`, the share
/// of time the sender spent in `write` (which waits only when the stream's
/// send buffer is full: the link cannot take more) and the bytes that got
/// through. On loopback writes never wait and compression stays off; on a
/// 1 Gbit/s WAN they wait most of the time and it turns on.
struct CompressionPolicy {
    let codec: PageCodec
    /// Compressed over raw bytes, moving average of recent attempts.
    private(set) var ratio = 0.5
    /// Raw bytes per CPU second the compressor took (nil: not measured yet).
    private(set) var compressorRate: Double?
    /// Wire bytes per second the link took while it was the bottleneck.
    private(set) var linkRate: Double?
    /// Whether sends waited for the link for most of the last window.
    /// Assumed at first, so a WAN stream compresses from its first chunk;
    /// one window on a fast link turns it off.
    private(set) var linkBound = true
    private var sinceProbe = 0
    private var windowStart = ContinuousClock.now
    private var windowBytes = 0
    private var windowInSend: Duration = .zero

    static let probeInterval = 32
    static let window: Duration = .milliseconds(100)
    /// Above this ratio compression is not worth a frame's CPU.
    static let worthwhileRatio = 0.9

    init(codec: PageCodec) { self.codec = codec }

    mutating func shouldCompress() -> Bool {
        guard codec != .none else { return false }
        if ratio < Self.worthwhileRatio, linkBound, (compressorRate ?? .infinity) > (linkRate ?? 0) { return true }
        sinceProbe += 1
        guard sinceProbe >= Self.probeInterval else { return false }
        sinceProbe = 0
        return true
    }

    mutating func compressed(raw: Int, output: Int, seconds: Double) {
        ratio = 0.8 * ratio + 0.2 * (Double(output) / Double(max(raw, 1)))
        if seconds > 0 {
            let rate = Double(raw) / seconds
            compressorRate = compressorRate.map { 0.8 * $0 + 0.2 * rate } ?? rate
        }
    }

    mutating func sent(wireBytes: Int, took: Duration) {
        windowBytes += wireBytes
        windowInSend += took
        let elapsed = windowStart.duration(to: .now)
        guard elapsed >= Self.window else { return }
        linkBound = windowInSend.seconds > 0.5 * elapsed.seconds
        if linkBound {
            let rate = Double(windowBytes) / elapsed.seconds
            linkRate = linkRate.map { 0.5 * $0 + 0.5 * rate } ?? rate
        }
        windowStart = .now
        windowBytes = 0
        windowInSend = .zero
    }
}
