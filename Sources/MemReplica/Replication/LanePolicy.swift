/// How many streams an eager subscription's large passes are spread over
/// (LANES, docs/PROTOCOL.md §5 item 3). Each stream has its own
/// flow-control window and its own reassembly of what arrives out of order,
/// while the connection keeps one congestion controller: one region's bulk
/// is then not bound by what one stream's window holds while its lost
/// packets are repaired.
public struct LanePolicy: Sendable, Equatable {
    /// Streams per pass, the region stream included (1 to
    /// `FrameLimits.maxLanes`); 1: no lanes.
    public var count: Int
    /// A pass that may send fewer bytes uses the region stream only: one
    /// stream's window covers it. The initial pass may send the whole
    /// region; a later one, the chunks it found changed.
    public var minimumPassBytes: Int

    public init(count: Int, minimumPassBytes: Int = LanePolicy.defaultMinimumPassBytes) {
        self.count = max(1, min(count, Int(FrameLimits.maxLanes)))
        self.minimumPassBytes = minimumPassBytes
    }

    /// One stream's window (16 MiB by default): a pass that fits in it
    /// gains nothing from more windows.
    public static let defaultMinimumPassBytes = 16 << 20
    public static let single = LanePolicy(count: 1)

    /// The default for a transport: QUIC spreads a large pass over
    /// eight streams, whose windows together make the connection's (8 ×
    /// 16 MiB = 128 MiB by default). TCP does not: on one connection the streams share one
    /// byte stream and its losses, and one connection per stream would add
    /// congestion controllers, taking more than a fair share of the path.
    public static func standard(for kind: TransportKind) -> LanePolicy {
        kind == .quic ? LanePolicy(count: 8) : .single
    }

    /// The streams for a pass that may send `bytes`.
    func lanes(forPassBytes bytes: Int) -> Int {
        bytes >= minimumPassBytes ? count : 1
    }
}
