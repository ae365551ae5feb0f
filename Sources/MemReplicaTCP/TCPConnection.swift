import MemReplicaSystem
import MemReplicaTransportCore
/// A TCP transport connection as user code sees it. Every call is forwarded
/// to the endpoint's loop thread; the handle itself holds no mutable state.
public final class TCPConnection: TransportConnection, @unchecked Sendable {
    let core: TCPConnectionCore
    public let peerIdentity: PeerIdentity
    public let remoteAddress: PeerAddress

    init(core: TCPConnectionCore) {
        self.core = core
        // Fixed once the handshake is done, which it is by now.
        peerIdentity = core.peerIdentity
        remoteAddress = core.remoteAddress
    }

    public func openStream() async throws -> any TransportStream { try await openTCPStream() }
    public func openTCPStream() async throws -> TCPStream { TCPStream(core: try await core.openStream()) }
    public func acceptStream() async throws -> any TransportStream { TCPStream(core: try await core.acceptStream()) }
    public func statistics() async -> ConnectionStatistics { await core.statisticsFromLoop() }
    public func waitClosed() async -> TransportError { await core.waitClosed() }

    public func close(errorCode: UInt64 = 0, reason: String = "") async {
        let core = self.core
        await core.onLoop { core.closeByApplication(errorCode: errorCode, reason: reason) }
    }
}
