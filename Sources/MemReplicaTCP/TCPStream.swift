import MemReplicaSystem
import MemReplicaTransportCore

/// A stream of the TCP transport as user code sees it (`StreamHandle`).
/// Streams share their TCP connection, but each has its own credit: a slow
/// reader slows its sender, never the other streams on the connection.
public final class TCPStream: StreamHandle, @unchecked Sendable {
    let core: TCPStreamCore

    init(core: TCPStreamCore) {
        self.core = core
        super.init(streamCore: core)
    }
}
