/// Who a region is across restarts: an id made once, when a state folder
/// first exports the region from a file, and the owner generation.
///
/// The generation changes whenever the primary's history may have diverged
/// from what a mirror saw: each time a peer starts exporting the region
/// (writes made while nobody tracked them are unknown) and, later, each
/// hand-over to a new owner. DIRTY epochs and WRITE versions count within a
/// generation. A mirror that meets a new generation (or another id)
/// revalidates everything it holds by hash; one that meets an older
/// generation than it has seen refuses that peer as a primary
/// (`stale_generation`). See docs/PROTOCOL.md §3.
public struct RegionIdentity: Sendable, Hashable, Codable, CustomStringConvertible {
    /// 32 lower-case hex digits (128 random bits).
    public var id: String
    /// Starts at 1; 0 on the wire means "none seen".
    public var generation: UInt64

    public init(id: String, generation: UInt64) {
        self.id = id
        self.generation = generation
    }

    /// A new region: a random id, generation 1 (what a peer without a state
    /// folder uses, e.g. a library user or a test).
    public static func fresh() -> RegionIdentity {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<2).map { _ -> String in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        return RegionIdentity(id: id, generation: 1)
    }

    public var description: String { "\(id.prefix(8))…/g\(generation)" }
}
