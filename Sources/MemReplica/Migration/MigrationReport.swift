import Foundation

/// The outcome of one migration, as `memreplica migrate --json` prints it
/// (a stable object: keys are only ever added).
public struct MigrationReport: Sendable, Codable, Equatable {
    public var region: String
    public var destination: String
    public var mode: MigrationMode
    /// "handed over" (the destination owns the region) or "aborted" (the
    /// source still does, unharmed).
    public var outcome: String
    /// Why it was aborted; nil when handed over.
    public var reason: String?
    /// From the freeze of the writers to the destination's HANDED_OVER:
    /// the time no writer could store to the region anywhere. Nil when no
    /// freeze happened.
    public var downtimeMilliseconds: Double?
    /// Of the downtime: the last scan and flush, and hashing the frozen region.
    public var finalFlushMilliseconds: Double?
    public var digestMilliseconds: Double?
    public var totalSeconds: Double
    /// Of the total: until the destination was ready (its mirror synced,
    /// its hashes made), and the pre-copy rounds until the freeze.
    public var readySeconds: Double?
    public var roundsSeconds: Double?
    /// Chunk bytes sent to the destination during the migration (rounds
    /// and final flush; an initial sync the destination needed included).
    public var bytesSent: UInt64
    public var regionBytes: UInt64
    /// Pre-copy rounds: scan passes that found changes to send.
    public var rounds: Int
    /// Chunks sent more than once during the migration.
    public var chunksResent: UInt64
    /// The region's owner generation afterwards (the destination's when
    /// handed over, the source's when aborted).
    public var generation: UInt64
    /// The estimate the freeze was decided on.
    public var estimatedDowntimeMilliseconds: Double?
    /// Attached writer processes stopped at the freeze.
    public var frozenProcesses: [Int32]
    public var startedAt: Date
    /// The two copies hashed equal: checked before the commit (`verify`
    /// before: always true when handed over), or right after it (false: the
    /// destination's copy differs from the source's frozen state; nil: the
    /// answer did not come).
    public var verified: Bool?
    /// "before" or "after".
    public var verify: String?
    /// How the region was handed over: "precopy" or "postcopy" (a hybrid
    /// migration says which it ended as). Nil when aborted before the freeze.
    public var handedOverAs: MigrationMode?
    /// Post-copy: chunks the destination's copy was told it held stale (or
    /// every chunk, when it held no copy), pulled after the commit.
    public var chunksPulled: Int?
    /// Post-copy: from the commit until the destination held every chunk
    /// and the source let go (nil: not confirmed; the source keeps serving
    /// the new owner's reads of its frozen region).
    public var fillSeconds: Double?
    /// `--when quiet`: how long the migration waited for a quiet phase
    /// before it began (not in `totalSeconds`, nor its bytes in
    /// `bytesSent`), and the writers' cycle it found (nil: none).
    public var waitedSeconds: Double?
    public var cycleSeconds: Double?

    public var handedOver: Bool { outcome == "handed over" }
}
