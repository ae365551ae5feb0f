import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// `--when quiet`: the wait for a quiet phase, and post-copy's catch-up in it.
extension SourceMigration {
    /// `--when quiet`: looks for a cycle in the region's dirty rate (from
    /// before the migration, when the peer kept it) and waits for the start
    /// of its next quiet phase; without enough history it watches for up
    /// to `quietWatchLimit`. What the subscription sends meanwhile is
    /// replication as usual: the migration's bytes and time start after.
    /// Returns when the quiet phase is predicted to end (nil: no cycle).
    func waitForQuiet(result: inout Result) async throws -> ContinuousClock.Instant? {
        let began = ContinuousClock.now
        let model = QuietPhaseModel()
        let bin = DirtyRateHistory.binDuration
        let watchUntil = min(began + Self.quietWatchLimit, began + (deadline - began) / 2)
        progress { $0.phase = "looking for a quiet phase" }
        var found: QuietPhaseModel.Cycle?
        // A history as long as the watch limit that shows no cycle has none.
        while ContinuousClock.now < watchUntil {
            let series = dirtySeries()
            found = model.cycle(in: series)
            if found != nil || Double(series.count) >= Self.quietWatchLimit / bin { break }
            try await Task.sleep(for: bin)
        }
        if let cycle = found {
            result.report.cycleSeconds = (bin * cycle.periodBins).seconds
            let wait = bin * cycle.binsUntilQuiet
            progress { $0.phase = "waiting for the quiet phase" }
            logger.info("'\(name)': the writers cycle every \(bin * cycle.periodBins); the quiet phase begins in \(wait)")
            if wait > .zero { try await Task.sleep(for: min(wait, deadline - .now)) }
        } else {
            logger.info("'\(name)': no cycle in the dirty rate; migrating now")
        }
        let quietEnds = found.map { ContinuousClock.now + bin * $0.quietBins }
        result.report.waitedSeconds = began.duration(to: .now).seconds
        // The migration proper starts here.
        counts.withLock { c in
            c.bytes = 0
            c.resent = 0
            c.sent = [Bool](repeating: false, count: c.sent.count)
        }
        return quietEnds
    }

    /// Waits until the destination's mirror holds every change sent and
    /// none is left to send, or until `limit`.
    func catchUp(destination: String, before limit: ContinuousClock.Instant) async throws {
        progress { $0.phase = "letting the mirror catch up in the quiet phase" }
        while ContinuousClock.now < min(limit, deadline) {
            guard let state = subscription(of: destination) else { return }
            if state.versionLag == 0, state.passPending == 0, state.passBegan == nil { return }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    /// How long `--when quiet` watches for a cycle the history does not show yet.
    static let quietWatchLimit: Duration = .seconds(20)
}
