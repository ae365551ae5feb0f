import MemReplicaSystem
import DequeModule

/// Who waits on a connection, for a stream or for its end (loop thread).
package struct ConnectionWaiters<Stream> {
    /// Streams the peer opened that nobody accepted yet.
    package var acceptQueue = Deque<Stream>()
    package var acceptWaiters = Deque<Delivery<Stream>>()
    /// Openers waiting for the peer to allow another stream.
    package var openWaiters = Deque<Delivery<Stream>>()
    package var closeWaiters: [CheckedContinuation<TransportError, Never>] = []

    package init() {}

    /// A stream the peer opened: to the first waiting acceptor, or queued.
    package mutating func peerOpened(_ stream: Stream) {
        if let waiter = acceptWaiters.popFirst() {
            waiter.succeed(stream)
        } else {
            acceptQueue.append(stream)
        }
    }

    /// Tells everyone waiting that the connection ended. Streams never
    /// accepted stay to the transport (QUIC still hands them out, with what
    /// arrived before the end).
    package mutating func connectionEnded(_ error: TransportError) {
        while let w = acceptWaiters.popFirst() { w.fail(error) }
        while let w = openWaiters.popFirst() { w.fail(error) }
        for w in closeWaiters { w.resume(returning: error) }
        closeWaiters.removeAll()
    }
}
