import MemReplicaSystem

/// A transport's connection core (`QUICConnectionCore`, `TCPConnectionCore`)
/// as its handle sees it. Confined to the endpoint's loop thread; the
/// extension below is what the handles' calls post there, the same for
/// every transport.
package protocol StreamConnectionCore: LoopBound {
    associatedtype Stream: StreamCore
    var shared: ConnectionSharedState { get }
    var streams: [Int64: Stream] { get }
    var waiters: ConnectionWaiters<Stream> { get set }
    /// Client: the `connect` waiting for the handshake to finish.
    var connectWaiter: Delivery<Self>? { get set }
    /// Why the connection ended (loop thread); nil while it lives.
    var closeError: TransportError? { get }
    /// A new local stream, or nil while the peer allows no more.
    func openStreamNow() throws -> Stream?
    func statistics() -> ConnectionStatistics
}

extension StreamConnectionCore {
    /// Opens a stream, waiting for the peer's stream credit if need be.
    package func openStream() async throws -> Stream {
        try await Delivery<Stream>.wait { d in
            postToLoop { [self] in
                if let error = closeError { d.fail(error); return }
                do {
                    if let s = try openStreamNow() {
                        d.succeed(s)
                    } else {
                        waiters.openWaiters.append(d)
                    }
                } catch {
                    d.fail(error)
                }
            }
        }
    }

    /// The next stream the peer opens; throws once the connection ends.
    package func acceptStream() async throws -> Stream {
        try await Delivery<Stream>.wait { d in
            postToLoop { [self] in
                if let s = waiters.acceptQueue.popFirst() {
                    d.succeed(s)
                } else if let error = closeError {
                    d.fail(error)
                } else {
                    waiters.acceptWaiters.append(d)
                }
            }
        }
    }

    package func statisticsFromLoop() async -> ConnectionStatistics {
        await onLoop { [self] in statistics() }
    }

    package func waitClosed() async -> TransportError {
        await withCheckedContinuation { c in
            postToLoop { [self] in
                if let error = closeError { c.resume(returning: error) } else { waiters.closeWaiters.append(c) }
            }
        }
    }

    /// Tells the connection's streams, everyone waiting on it and every
    /// thread that it ended (loop thread, as the transport finishes it).
    package func failStreamsAndWaiters(_ error: TransportError) {
        shared.closed(with: error)
        connectWaiter?.fail(error)
        connectWaiter = nil
        for s in streams.values { s.fail(error) }
        for s in waiters.acceptQueue { s.fail(error) }
        waiters.connectionEnded(error)
    }
}
