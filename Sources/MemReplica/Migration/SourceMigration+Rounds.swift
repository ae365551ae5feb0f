import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// Pre-copy rounds: the downtime estimate and when it fits.
extension SourceMigration {
    /// Hybrid: how long the estimate may stay without falling by a tenth
    /// before post-copy takes over.
    static let hybridPatience: Duration = .seconds(1)

    /// One sample of the destination's subscription.
    struct Sample {
        var at: ContinuousClock.Instant
        var sent: UInt64
        var acknowledged: UInt64
    }

    /// Pre-copy rounds: waits until the estimated downtime fits the budget,
    /// confirmed by a whole pass. Returns the estimate (seconds). The
    /// estimate is what is unacknowledged or still to send in the pass under
    /// way, plus what the writers dirty per scan interval and pass, at the
    /// rate the destination acknowledged over the last second, plus one RTT,
    /// one scan, and the source's digest of its frozen region (the
    /// destination's is kept current during the rounds).
    /// With `mayGiveUp` (hybrid), returns nil once the estimate has not
    /// fallen by a tenth for `hybridPatience`, or at the timeout: the
    /// rounds stopped converging, post-copy takes over.
    func converge(over connection: any TransportConnection, destination: String, mayGiveUp: Bool = false,
                          result: inout Result) async throws -> Double? {
        let budget = request.maxDowntimeMilliseconds / 1000
        // The source hashes its frozen region; the destination's hashes are
        // kept current during the rounds (`HandOverHashes`).
        // With `--verify after` it follows the commit, outside the downtime.
        let digestSeconds = request.verify == .after ? 0
            : FrozenRegionDigest.secondsPerChunk(region, key: key) * Double(region.geometry.chunkCount)
                / Double(FrozenRegionDigest.threads)
        var samples: [Sample] = []
        var rate = 0.0
        var lastPasses: UInt64?
        var lastSent: UInt64 = 0
        var best: (estimate: Double, at: ContinuousClock.Instant)?
        var fitAtPasses: UInt64?
        progress { $0.phase = "pre-copy rounds" }
        while true {
            let now = ContinuousClock.now
            guard let state = subscription(of: destination) else {
                guard now < deadline else { throw Abort(reason: "the destination's mirror did not stay subscribed") }
                samples.removeAll()
                try await Task.sleep(for: .milliseconds(10))
                continue
            }
            if let p = lastPasses, state.passes > p, state.sentVersion > lastSent { result.report.rounds += 1 }
            lastPasses = state.passes
            lastSent = state.sentVersion
            samples.append(Sample(at: now, sent: state.sentVersion, acknowledged: state.acknowledgedVersion))
            samples.removeAll { $0.at.duration(to: now) > .seconds(1) }
            let stats = await connection.statistics()
            let rtt = stats.smoothedRTT.seconds
            var dirtyRate = 0.0
            if let first = samples.first, first.at < now {
                let span = first.at.duration(to: now).seconds
                let acked = Double(state.acknowledgedVersion - min(first.acknowledged, state.acknowledgedVersion))
                dirtyRate = Double(state.sentVersion - min(first.sent, state.sentVersion)) * Double(chunkSize) / span
                // The rate sustained over the window: a burst of ACKs after
                // a stall must not pass for the link's capacity.
                if span >= 0.25 { rate = acked * Double(chunkSize) / span }
            }
            // A writer slower than the link makes the ACK rate its own rate.
            // What fits in the congestion window is on its way within a
            // round trip, whatever that rate: drained at window per RTT.
            let window = stats.smoothedRTT > .zero ? Double(stats.congestionWindow) / stats.smoothedRTT.seconds : 0
            // Unacknowledged, plus what the pass under way has yet to send,
            // plus what was dirtied since its scan: a pass that blocks on
            // the window leaves more than one interval's worth.
            let pending = Double(state.versionLag + UInt64(state.passPending)) * Double(chunkSize)
                + dirtyRate * (exports.scanInterval.seconds
                               + max(state.lastPassSeconds, state.passBegan.map { $0.duration(to: now).seconds } ?? 0))
            let known = samples.count >= 2 && samples.first!.at.duration(to: now) >= .milliseconds(250)
            let capacity = pending <= Double(stats.congestionWindow) ? max(rate, window) : rate
            let transfer = pending == 0 ? 0 : (capacity > 0 ? pending / capacity : .infinity)
            // The final flush scans once more after the freeze.
            let estimate = transfer + rtt + digestSeconds + state.lastScanSeconds
            progress {
                $0.round = result.report.rounds
                $0.pendingBytes = UInt64(pending)
                $0.estimatedDowntimeMilliseconds = estimate.isFinite ? estimate * 1000 : nil
                $0.rateBytesPerSecond = rate
            }
            // A fit counts once a whole pass confirms it: between a scan and
            // the record of its result the state looks idle, and a burst
            // that began since the last scan is not in it yet.
            if known, estimate <= budget {
                if let seen = fitAtPasses, state.passes > seen, state.passBegan == nil { return estimate }
                if fitAtPasses == nil {
                    fitAtPasses = state.passes
                    // An idle region passes only every second on its own.
                    exports.requestPass(of: name)
                }
            } else {
                fitAtPasses = nil
            }
            if mayGiveUp, known {
                if let b = best, !(estimate < b.estimate * 0.9) {
                    if b.at.duration(to: now) >= Self.hybridPatience || now >= deadline {
                        let estimated = estimate.isFinite ? String(format: "%.0f ms", estimate * 1000) : "unbounded"
                        logger.info("'\(name)': pre-copy rounds stopped converging (estimated downtime \(estimated)); switching to post-copy")
                        return nil
                    }
                } else {
                    best = (estimate, now)
                }
            }
            guard now < deadline else {
                let estimated = estimate.isFinite ? String(format: "%.0f ms", estimate * 1000) : "unbounded"
                throw Abort(reason: "did not converge within \(Int(request.timeoutSeconds)) s: the writers dirty "
                            + String(format: "%.1f MB/s, the destination acknowledged %.1f MB/s over the last second",
                                     dirtyRate / 1e6, rate / 1e6)
                            + "; estimated downtime \(estimated) against --max-downtime "
                            + String(format: "%.0f ms", request.maxDowntimeMilliseconds))
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func subscription(of destination: String) -> RegionExports.MirrorState? {
        exports.mirrorStates().filter { $0.region == name && $0.peer == destination && $0.synced }
            .max { $0.sentVersion < $1.sentVersion }
    }
}
