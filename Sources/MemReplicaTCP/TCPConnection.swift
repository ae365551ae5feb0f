import MemReplicaSystem
import MemReplicaTransportCore

/// A connection of the TCP transport as user code sees it: a
/// `ConnectionHandle` whose streams are `TCPStream`s.
public final class TCPConnection: ConnectionHandle, @unchecked Sendable {
    init(core: TCPConnectionCore) { super.init(connectionCore: core) }
}

extension TCPConnectionCore: HandledConnectionCore {
    package func handle(for stream: TCPStreamCore) -> StreamHandle { TCPStream(core: stream) }
}
