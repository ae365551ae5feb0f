import MemReplicaSystem
import MemReplicaTransportCore
/// A TCP transport connection as user code sees it. Every call is forwarded
/// to the endpoint's loop thread; the handle itself holds no mutable state.
public final class TCPConnection: TransportConnection, @unchecked Sendable {
    let core: TCPConnectionCore
    private var endpoint: TCPEndpoint { core.endpoint }
    public let peerIdentity: PeerIdentity
    public let remoteAddress: PeerAddress

    init(core: TCPConnectionCore) {
        self.core = core
        // Fixed once the handshake is done, which it is by now.
        peerIdentity = core.peerIdentity
        remoteAddress = core.remoteAddress
    }

    public func openStream() async throws -> any TransportStream {
        try await openTCPStream()
    }

    public func openTCPStream() async throws -> TCPStream {
        let core = self.core
        let stream = try await Delivery<TCPStreamCore>.wait { d in
            endpoint.post {
                if let error = core.closeError { d.fail(error); return }
                do {
                    if let s = try core.openStreamNow() {
                        d.succeed(s)
                    } else {
                        core.openWaiters.append(d)
                    }
                } catch {
                    d.fail(error)
                }
            }
        }
        return TCPStream(core: stream)
    }

    public func acceptStream() async throws -> any TransportStream {
        let core = self.core
        let stream = try await Delivery<TCPStreamCore>.wait { d in
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
        return TCPStream(core: stream)
    }

    public func statistics() async -> ConnectionStatistics {
        let core = self.core
        return await endpoint.onLoop { core.statistics() }
    }

    public func close(errorCode: UInt64 = 0, reason: String = "") async {
        let core = self.core
        await endpoint.onLoop { core.closeByApplication(errorCode: errorCode, reason: reason) }
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
