import MemReplicaSystem
import MemReplicaTransportCore

/// A bidirectional QUIC stream as user code sees it (`StreamHandle`); over
/// QUIC its bytes may have come as 0-RTT early data (`receivedEarlyData`),
/// and its reading can be handed to the loop thread (`LoopServedStream`).
public final class QUICStream: StreamHandle, @unchecked Sendable {
    package let core: QUICStreamCore

    init(core: QUICStreamCore) {
        self.core = core
        super.init(streamCore: core)
    }
}
