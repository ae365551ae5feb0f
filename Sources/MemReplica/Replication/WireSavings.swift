/// What a region's eager subscriptions put on the wire against what
/// changed, summed over its mirrors (`stats`, Prometheus). Every chunk the
/// primary found changed is counted once in `bytesDirtied`; how it then
/// travelled — skipped as redundant, named as zeros, as some pages, whole,
/// compressed or not — in the rest.
public struct WireSavings: Sendable, Codable, Equatable {
    /// Chunks pushed or skipped, and their bytes (whole chunks).
    public var chunksChanged: UInt64 = 0
    public var bytesDirtied: UInt64 = 0
    /// Frame bytes of the WRITE and PAGES frames sent for them, headers included.
    public var wireBytes: UInt64 = 0
    /// Chunks not sent: their bytes equal what the mirror was last sent.
    public var redundantChunks: UInt64 = 0
    /// Chunks sent as "all zeros", with no page bytes.
    public var zeroChunks: UInt64 = 0
    /// Pages named zero inside PAGES frames (zero chunks' included).
    public var zeroPages: UInt64 = 0
    /// Chunks sent as some of their pages only (the rest unchanged).
    public var deltaChunks: UInt64 = 0
    /// Page bytes before and after compression, and the CPU time spent.
    public var compressionInputBytes: UInt64 = 0
    public var compressionOutputBytes: UInt64 = 0
    public var compressionSeconds: Double = 0
    /// Chunks sent again on a subscription that had sent them before.
    public var chunksResent: UInt64 = 0

    public init() {}

    /// Wire bytes per byte dirtied (below 1: the encoding saved bytes).
    public var wireRatio: Double { bytesDirtied == 0 ? 0 : Double(wireBytes) / Double(bytesDirtied) }
    /// Compressed over raw page bytes (1: nothing compressed).
    public var compressionRatio: Double {
        compressionInputBytes == 0 ? 1 : Double(compressionOutputBytes) / Double(compressionInputBytes)
    }

    public mutating func add(_ other: WireSavings) {
        chunksChanged += other.chunksChanged; bytesDirtied += other.bytesDirtied; wireBytes += other.wireBytes
        redundantChunks += other.redundantChunks; zeroChunks += other.zeroChunks; zeroPages += other.zeroPages
        deltaChunks += other.deltaChunks
        compressionInputBytes += other.compressionInputBytes; compressionOutputBytes += other.compressionOutputBytes
        compressionSeconds += other.compressionSeconds; chunksResent += other.chunksResent
    }
}
