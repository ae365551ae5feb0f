import MemReplicaSystem
import DequeModule

/// Each exported region's dirty rate over the last minute, in bins of
/// `binDuration` (changed chunks its tracker reported per bin): the series
/// `--when quiet` looks for a cycle in. Fed by the peer every bin from the
/// trackers' running totals; a region whose tracker is gone (no mirror
/// follows it) starts again.
public final class DirtyRateHistory: Sendable {
    public static let binDuration: Duration = .milliseconds(100)
    public static let bins = 600

    private struct Series {
        var lastTotal: Int
        var bins: Deque<Double> = []
    }
    private let state = Locked<[String: Series]>([:])

    public init() {}

    /// One bin's worth: each region's tracker total now.
    public func record(_ totals: [String: Int]) {
        state.withLock { all in
            for name in all.keys where totals[name] == nil { all.removeValue(forKey: name) }
            for (name, total) in totals {
                guard var series = all[name], total >= series.lastTotal else {
                    all[name] = Series(lastTotal: total)
                    continue
                }
                series.bins.append(Double(total - series.lastTotal))
                series.lastTotal = total
                if series.bins.count > Self.bins { series.bins.removeFirst() }
                all[name] = series
            }
        }
    }

    /// Changed chunks per bin, oldest first.
    public func series(of region: String) -> [Double] {
        state.withLock { Array($0[region]?.bins ?? []) }
    }
}
