import MemReplicaSystem

/// Lets another task cut a publish loop's wait between scan passes short:
/// a migration's final flush wants a pass that begins after the writers
/// stopped, now rather than up to one interval later.
final class PassTrigger: Sendable {
    private struct State {
        var fired = false
        var waiter: CheckedContinuation<Void, Never>?
    }
    private let state = Locked(State())

    /// Ends the current wait, or the next one at once.
    func fire() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let w = s.waiter else {
                s.fired = true
                return nil
            }
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }

    /// Returns after `interval`, or sooner when fired; throws when cancelled.
    func wait(upTo interval: Duration) async throws {
        if state.withLock({ s in defer { s.fired = false }; return s.fired }) { return }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Task.sleep(for: interval) }
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
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}
