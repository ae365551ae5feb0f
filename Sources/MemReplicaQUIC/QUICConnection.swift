import MemReplicaSystem
import MemReplicaTransportCore
/// A QUIC connection as user code sees it. Every call is forwarded to the
/// endpoint's loop thread; the handle itself holds no mutable state.
public final class QUICConnection: TransportConnection, @unchecked Sendable {
    let core: QUICConnectionCore
    public let peerIdentity: PeerIdentity
    public let remoteAddress: PeerAddress

    init(core: QUICConnectionCore) {
        self.core = core
        // Fixed once the handshake is done, which it is by now.
        peerIdentity = core.peerIdentity
        remoteAddress = core.remoteAddress
    }

    public func openStream() async throws -> any TransportStream { try await openQUICStream() }
    public func openQUICStream() async throws -> QUICStream { QUICStream(core: try await core.openStream()) }
    public func acceptStream() async throws -> any TransportStream { QUICStream(core: try await core.acceptStream()) }
    public func statistics() async -> ConnectionStatistics { await core.statisticsFromLoop() }
    public func waitClosed() async -> TransportError { await core.waitClosed() }

    public func close(errorCode: UInt64 = 0, reason: String = "") async {
        let core = self.core
        await core.onLoop { core.closeByApplication(errorCode: errorCode, reason: reason, now: monotonicNanoseconds()) }
    }
}
