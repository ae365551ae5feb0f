/// What a dirty tracker's scans cost: the stats hook for scan time per round.
public struct DirtyScanStatistics: Sendable, Equatable {
    /// Scans so far.
    public private(set) var scans = 0
    /// Duration of the latest scan, and the longest and total so far.
    public private(set) var lastDuration: Duration = .zero
    public private(set) var longestDuration: Duration = .zero
    public private(set) var totalDuration: Duration = .zero
    /// Chunks the latest scan reported.
    public private(set) var lastChangedChunks = 0
    /// Chunks all scans reported: its rate of change is the dirty rate.
    public private(set) var totalChangedChunks = 0

    public init() {}

    public var meanDuration: Duration { scans == 0 ? .zero : totalDuration / scans }

    mutating func record(_ duration: Duration, changedChunks: Int) {
        scans += 1
        lastDuration = duration
        longestDuration = max(longestDuration, duration)
        totalDuration += duration
        lastChangedChunks = changedChunks
        totalChangedChunks += changedChunks
    }
}
