/// Whether the next chunk's pages are worth compressing, from what was
/// measured on this subscription: compress while the content compresses
/// and the compressor outruns the link; then the link, carrying fewer
/// bytes per region byte, moves the region faster. Incompressible content
/// is skipped but probed every `probeInterval` chunks, so a change of
/// content is noticed.
///
/// The link's rate is its congestion controller's (`TransportStream.sendRate`:
/// bbr's pacing rate, or the window over the smoothed RTT), read every
/// `linkPollInterval` by the sender. It is not inferred from whether
/// writes wait: send buffers hold more than a bandwidth-delay product (and
/// a pass over lanes has eight), so writes stop waiting long before the
/// link stops being the bottleneck, and a sender busy compressing waits
/// less. On a 1 Gbit/s WAN compression runs; on loopback TCP reports
/// gigabytes per second and it stays off, while QUIC's bbr paces loopback
/// at a few hundred MB/s and it runs (bench/RESULTS.md: no cost measured).
struct CompressionPolicy {
    let codec: PageCodec
    /// Compressed over raw bytes, moving average of recent attempts.
    private(set) var ratio = 0.5
    /// Raw bytes per CPU second the compressor took (nil: not measured yet).
    private(set) var compressorRate: Double?
    /// Bytes per second the link lets this subscription send (nil: not
    /// measured yet, and then the link is taken to be the slower: a WAN
    /// stream compresses from its first chunk).
    private(set) var linkRate: Double?
    private var sinceProbe = 0

    static let probeInterval = 32
    /// How often a sender asks its stream for the link's rate.
    static let linkPollInterval: Duration = .milliseconds(100)
    /// Above this ratio compression is not worth a frame's CPU.
    static let worthwhileRatio = 0.9

    init(codec: PageCodec) { self.codec = codec }

    /// Whether the compressor, as measured, feeds more region bytes per
    /// second than the link carries raw.
    var compressorOutrunsLink: Bool {
        guard let linkRate, let compressorRate else { return true }
        return compressorRate > linkRate
    }

    mutating func shouldCompress() -> Bool {
        guard codec != .none else { return false }
        if ratio < Self.worthwhileRatio, compressorOutrunsLink { return true }
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

    /// The link's rate as its stream last reported it (nil: not known).
    mutating func link(bytesPerSecond: Double?) {
        guard let bytesPerSecond, bytesPerSecond > 0 else { return }
        linkRate = bytesPerSecond
    }
}
