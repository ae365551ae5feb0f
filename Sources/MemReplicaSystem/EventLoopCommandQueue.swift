import Foundation

/// Closures other threads hand to a loop thread that owns everything it
/// touches (the QUIC and TCP endpoints' loops), and the eventfd wake-up
/// that gets them run. Once the loop has exited, a closure posted runs at
/// once on the poster's thread, under `afterExit`: the loop's tables are
/// gone and the closure only finds that out and fails its caller.
///
/// On the post-copy fault path: one lock and one array append per command,
/// and a wake-up only when the queue was empty (the loop takes every
/// pending command in one batch).
package final class EventLoopCommandQueue: @unchecked Sendable {
    private let poller: Poller
    private let queue = Locked(Queue())
    /// Serializes commands run inline once the loop has exited, and the
    /// exiting loop's tear-down against them. A bare lock: it guards no
    /// value (a `Locked<Void>`'s zero-sized value made ThreadSanitizer
    /// report the lock's own field as raced).
    private let afterExit = NSLock()

    private struct Queue {
        var pending: [@Sendable () -> Void] = []
        var loopExited = false
    }

    /// Posted commands wake the loop through `poller`'s eventfd.
    package init(waking poller: Poller) {
        self.poller = poller
    }

    /// Runs `body` on the loop thread (or, once the loop has exited, here).
    package func post(_ body: @escaping @Sendable () -> Void) {
        let (wasEmpty, exited) = queue.withLock { q -> (Bool, Bool) in
            if q.loopExited { return (false, true) }
            q.pending.append(body)
            return (q.pending.count == 1, false)
        }
        if exited {
            afterExit.withLock { body() }
        } else if wasEmpty {
            poller.wake()
        }
    }

    /// Runs `body` on the loop thread and returns its result.
    package func onLoop<R: Sendable>(_ body: @escaping @Sendable () -> R) async -> R {
        await withCheckedContinuation { c in post { c.resume(returning: body()) } }
    }

    /// Whether the loop has exited (`exitLoop`).
    package var loopExited: Bool { queue.withLock { $0.loopExited } }

    /// Loop thread: runs the commands posted so far.
    package func runPending() {
        let batch = queue.withLock { q -> [@Sendable () -> Void] in
            let b = q.pending
            q.pending.removeAll(keepingCapacity: true)
            return b
        }
        for c in batch { c() }
    }

    /// Loop thread, as it leaves its loop: from now on commands run inline
    /// on their posters' threads. The commands still pending and then
    /// `tearDown`, which drops the loop's tables, run under `afterExit`,
    /// the lock those inline commands run under, since they touch the same
    /// tables (ThreadSanitizer caught a lazy mirror's cleanup unwatching a
    /// descriptor while the exiting loop emptied its watchers).
    package func exitLoop(tearingDown tearDown: () -> Void) {
        let late = queue.withLock { q -> [@Sendable () -> Void] in
            q.loopExited = true
            defer { q.pending.removeAll() }
            return q.pending
        }
        afterExit.withLock {
            late.forEach { $0() }
            tearDown()
        }
    }
}
