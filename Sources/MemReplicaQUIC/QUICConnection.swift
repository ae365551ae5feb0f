import MemReplicaSystem
import MemReplicaTransportCore

/// A QUIC connection as user code sees it (`ConnectionHandle`), with
/// streams typed as `QUICStream`.
public final class QUICConnection: ConnectionHandle, @unchecked Sendable {
    let core: QUICConnectionCore

    init(core: QUICConnectionCore) {
        self.core = core
        super.init(connectionCore: core)
    }

    public func openQUICStream() async throws -> QUICStream { QUICStream(core: try await core.openStream()) }
}

extension QUICConnectionCore: HandledConnectionCore {
    package func handle(for stream: QUICStreamCore) -> StreamHandle { QUICStream(core: stream) }

    /// Loop thread: `ConnectionHandle.close`.
    package func closeByApplication(errorCode: UInt64, reason: String) {
        closeByApplication(errorCode: errorCode, reason: reason, now: monotonicNanoseconds())
    }
}
