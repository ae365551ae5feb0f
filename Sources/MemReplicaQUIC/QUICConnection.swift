import MemReplicaSystem
import MemReplicaTransportCore
/// A QUIC connection as user code sees it. Every call is forwarded to the
/// endpoint's loop thread; the handle itself holds no mutable state.
public final class QUICConnection: TransportConnection, @unchecked Sendable {
    let core: QUICConnectionCore
    private var endpoint: QUICEndpoint { core.endpoint }
    public let peerIdentity: PeerIdentity
    public let remoteAddress: PeerAddress

    init(core: QUICConnectionCore) {
        self.core = core
        // Fixed once the handshake is done, which it is by now.
        peerIdentity = core.peerIdentity
        remoteAddress = core.remoteAddress
    }

    public func openStream() async throws -> any TransportStream {
        try await openQUICStream()
    }

    public func openQUICStream() async throws -> QUICStream {
        let core = self.core
        let stream = try await Delivery<QUICStreamCore>.wait { d in
            endpoint.post {
                if let error = core.closeError { d.fail(error); return }
                if let s = core.openStreamNow() {
                    d.succeed(s)
                } else {
                    core.openWaiters.append(d)
                }
            }
        }
        return QUICStream(core: stream)
    }

    public func acceptStream() async throws -> any TransportStream {
        let core = self.core
        let stream = try await Delivery<QUICStreamCore>.wait { d in
            endpoint.post {
                if let s = core.acceptQueue.popFirst() {
                    d.succeed(s)
                } else if let error = core.closeError {
                    d.fail(error)
                } else {
                    core.acceptWaiters.append(d)
                }
            }
        }
        return QUICStream(core: stream)
    }

    public func statistics() async -> ConnectionStatistics {
        let core = self.core
        return await endpoint.onLoop { core.statistics() }
    }

    public func close(errorCode: UInt64 = 0, reason: String = "") async {
        let core = self.core
        await endpoint.onLoop { core.closeByApplication(errorCode: errorCode, reason: reason, now: monotonicNanoseconds()) }
    }

    public func waitClosed() async -> TransportError {
        let core = self.core
        return await withCheckedContinuation { c in
            endpoint.post {
                if let error = core.closeError { c.resume(returning: error) } else { core.closeWaiters.append(c) }
            }
        }
    }
}
