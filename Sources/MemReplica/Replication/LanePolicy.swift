/// How many streams an eager subscription's initial pass is spread over
/// (LANES, docs/PROTOCOL.md §5 item 3). Each stream has its own
/// flow-control window and its own reassembly of what arrives out of order,
/// while the connection keeps one congestion controller: one region's bulk
/// is then not bound by what one stream's window holds while its lost
/// packets are repaired.
public struct LanePolicy: Sendable, Equatable {
    /// Streams per pass, the region stream included (1 to
    /// `FrameLimits.maxLanes`); 1: no lanes.
    public var count: Int
    /// A smaller region's pass uses its region stream only: one stream's
    /// window covers it.
    public var minimumRegionBytes: Int

    public init(count: Int, minimumRegionBytes: Int = LanePolicy.defaultMinimumRegionBytes) {
        self.count = max(1, min(count, Int(FrameLimits.maxLanes)))
        self.minimumRegionBytes = minimumRegionBytes
    }

    /// Four stream windows (16 MiB each by default): a smaller region's
    /// pass is over in well under a second anyway.
    public static let defaultMinimumRegionBytes = 64 << 20
    public static let single = LanePolicy(count: 1)

    /// The default for a transport: QUIC spreads a large region's pass over
    /// eight streams, whose windows together make the connection's (8 ×
    /// 16 MiB = 128 MiB by default). TCP does not: on one connection the streams share one
    /// byte stream and its losses, and one connection per stream would add
    /// congestion controllers, taking more than a fair share of the path.
    public static func standard(for kind: TransportKind) -> LanePolicy {
        kind == .quic ? LanePolicy(count: 8) : .single
    }

    /// The streams for a pass over a region of `size` bytes.
    func lanes(forRegionBytes size: Int) -> Int {
        size >= minimumRegionBytes ? count : 1
    }
}
