import MemReplicaSystem
import DequeModule
import Foundation

/// What the QUIC and TCP endpoints' loops keep alike: the command queue
/// other threads reach the loop through, the live connections, inbound
/// connections waiting for `accept` (or `accept`s waiting for them), and
/// the stop that closes them all and ends the loop.
///
/// Loop-confined, apart from `commands`: every other member is touched only
/// on the loop thread (or, once it exited, under the command queue's
/// `afterExit` lock).
package final class EndpointLoop<Core: EndpointConnectionCore>: @unchecked Sendable {
    package let commands: EventLoopCommandQueue
    /// Every connection, half-open or established, by identity.
    package var live: [ObjectIdentifier: Core] = [:]
    /// Set by `stop`: no new connections; the loop ends once all are closed.
    package private(set) var stopping = false
    private var accepted = Deque<Core>()
    private var acceptWaiters = Deque<Delivery<Core?>>()
    private var stopWaiters: [CheckedContinuation<Void, Never>] = []

    package init(waking poller: Poller) {
        commands = EventLoopCommandQueue(waking: poller)
    }

    /// Starts the loop thread, which runs the endpoint's loop (and so keeps
    /// the endpoint alive until `close()` ends it).
    package func startThread(named name: String, running run: @escaping @Sendable () -> Void) {
        let t = Thread(block: run)
        t.name = name
        t.qualityOfService = .userInteractive
        t.start()
    }

    /// The next inbound connection established; nil once stopping.
    package func accept() async -> Core? {
        // Never fails: a stopped endpoint delivers nil.
        let core = try? await Delivery<Core?>.wait { d in
            commands.post { [self] in
                if let core = accepted.popFirst() {
                    d.succeed(core)
                } else if stopping {
                    d.succeed(nil)
                } else {
                    acceptWaiters.append(d)
                }
            }
        }
        return core ?? nil
    }

    /// Loop thread: hands an inbound connection just established to the
    /// oldest `accept` waiting, or keeps it for the next one.
    package func established(_ core: Core) {
        if let waiter = acceptWaiters.popFirst() {
            waiter.succeed(core)
        } else {
            accepted.append(core)
        }
    }

    /// Lines of `connectionSummaries()`, for the established connections.
    package func summaries() async -> [ConnectionSummary] {
        await commands.onLoop { [self] in live.values.compactMap(\.summary) }
    }

    /// Stops: the first call runs `closeAll` on the loop (it closes every
    /// connection) and ends waiting `accept`s; every call returns once the
    /// loop has exited (`exit`).
    package func stop(closingAll closeAll: @escaping @Sendable () -> Void) async {
        if commands.loopExited { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            commands.post { [self] in
                if commands.loopExited { c.resume(); return }
                stopWaiters.append(c)
                guard !stopping else { return }
                stopping = true
                closeAll()
                while let w = acceptWaiters.popFirst() { w.succeed(nil) }
            }
        }
    }

    /// Loop thread, as it leaves its loop: connections hold their endpoint,
    /// so every table that holds them (a connection accepted but never
    /// taken sits in `accepted`; `dropTables` empties the endpoint's own)
    /// is dropped, and nothing keeps the endpoint alive once closed.
    /// Under the command queue's `afterExit` lock (`exitLoop`).
    package func exit(droppingTables dropTables: () -> Void) {
        commands.exitLoop {
            accepted.removeAll()
            live.removeAll()
            dropTables()
        }
    }

    /// Loop thread, last: `stop`'s callers return.
    package func resumeStopWaiters() {
        for s in stopWaiters { s.resume() }
        stopWaiters.removeAll()
    }
}
