import MemReplicaSystem

/// Starts a publish loop's next pass: `ScanClock` fires it when its scan
/// left the subscription chunks to send; a migration's final flush fires
/// it for a pass that scans after the writers stopped, now rather than at
/// the next tick.
final class PassTrigger: Sendable {
    private struct State {
        var fired = false
        /// A firing asked for a scan of its own (not the clock's).
        var needsScan = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Locked(State())

    /// Ends the current wait, or the next one at once. `scanned`: the
    /// clock's scan just handed the subscription its chunks; otherwise the
    /// pass scans first.
    func fire(scanned: Bool = false) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if !scanned { s.needsScan = true }
            guard let w = s.waiter else {
                s.fired = true
                return nil
            }
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }

    /// Returns when fired, or after `interval`; throws when cancelled.
    /// True when the pass should scan first: a firing asked for it, or
    /// nothing fired within `interval` (a periodic pass).
    func wait(upTo interval: Duration) async throws -> Bool {
        let ready = state.withLock { s -> Bool? in
            guard s.fired else { return nil }
            defer { s.fired = false; s.needsScan = false }
            return s.needsScan
        }
        if let ready { return ready }
        let timedOut = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await Task.sleep(for: interval)
                return true
            }
            group.addTask { [self] in
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let now = state.withLock { s -> Bool in
                            if s.fired || Task.isCancelled {
                                s.fired = false
                                return true
                            }
                            s.waiter = continuation
                            return false
                        }
                        if now { continuation.resume() }
                    }
                } onCancel: {
                    let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                        defer { s.waiter = nil }
                        return s.waiter
                    }
                    waiter?.resume()
                }
                return false
            }
            defer { group.cancelAll() }
            return try await group.next() ?? true
        }
        return state.withLock { s -> Bool in
            defer { s.needsScan = false }
            return timedOut || s.needsScan
        }
    }
}
