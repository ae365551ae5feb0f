import MemReplicaSystem
import DequeModule

/// Each exported region's dirty rate over the last minute, in bins of
/// `binDuration`: the series `--when quiet` looks for a cycle in.
///
/// Where the region's tracker is exact and cheap (write-protection), the
/// peer scans it every bin itself (`record(changed:)`): the chunks the
/// writers dirtied in that bin. Otherwise (the hash scanner: a scan reads
/// the whole region) the bins take the tracker's running total as the
/// mirrors' passes leave it (`record(totals:)`), which follows the passes'
/// rhythm, not only the writers'. A region nobody follows starts again.
public final class DirtyRateHistory: Sendable {
    public static let binDuration: Duration = .milliseconds(100)
    public static let bins = 600

    private struct Series {
        var lastTotal: Int?
        var bins: Deque<Double> = []

        mutating func append(_ value: Double) {
            bins.append(value)
            if bins.count > DirtyRateHistory.bins { bins.removeFirst() }
        }
    }
    private let state = Locked<[String: Series]>([:])

    public init() {}

    /// One bin's worth: per region, the chunks dirtied in the bin (`changed`)
    /// or its tracker's running total now (`totals`). A region in neither
    /// is forgotten.
    public func record(changed: [String: Int] = [:], totals: [String: Int] = [:]) {
        state.withLock { all in
            for name in all.keys where changed[name] == nil && totals[name] == nil { all.removeValue(forKey: name) }
            for (name, count) in changed {
                var series = all[name] ?? Series()
                series.lastTotal = nil
                series.append(Double(count))
                all[name] = series
            }
            for (name, total) in totals where changed[name] == nil {
                guard var series = all[name], let last = series.lastTotal, total >= last else {
                    all[name] = Series(lastTotal: total)
                    continue
                }
                series.append(Double(total - last))
                series.lastTotal = total
                all[name] = series
            }
        }
    }

    /// Changed chunks per bin, oldest first.
    public func series(of region: String) -> [Double] {
        state.withLock { Array($0[region]?.bins ?? []) }
    }
}
