/// A migration while it runs, as `status` shows it on the source.
public struct MigrationProgress: Sendable, Codable, Equatable {
    public var phase: String
    /// Pre-copy rounds so far (scan passes that sent changes).
    public var round: Int
    /// Unacknowledged and freshly dirtied bytes, the estimate's numerator.
    public var pendingBytes: UInt64
    public var estimatedDowntimeMilliseconds: Double?
    /// What the destination acknowledged over the last second (bytes per second).
    public var rateBytesPerSecond: Double

    static let initial = MigrationProgress(phase: "starting", round: 0, pendingBytes: 0, estimatedDowntimeMilliseconds: nil,
                                           rateBytesPerSecond: 0)
}

/// What a peer keeps of migrations: those running (one per region at a
/// time) and the last report of each region.
struct MigrationBook {
    var running: [String: MigrationProgress] = [:]
    var last: [String: MigrationReport] = [:]
    /// Regions taken over whose check after the commit failed or never came.
    var problems: [String: String] = [:]
    /// Migrations by region, then outcome.
    var outcomes: [String: [String: Int]] = [:]

    var statistics: [StatsReport.Migration] {
        Set(running.keys).union(last.keys).sorted().map {
            StatsReport.Migration(region: $0, running: running[$0], last: last[$0], outcomes: outcomes[$0] ?? [:])
        }
    }
}
