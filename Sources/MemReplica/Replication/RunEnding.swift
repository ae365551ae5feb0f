import MemReplicaSystem
import MemReplicaTransportCore

/// Lets another task end a mirror's run over a shared connection: the
/// run's region stream is reset (its reads end), and a run that has not
/// started yet never does. The connection, which may carry other
/// mirrors, stays (`MirrorRunner.closeAfterHandOver`).
final class RunEnding: Sendable {
    private let state = Locked<(stream: (any TransportStream)?, ended: Bool)>((nil, false))

    /// The run's region stream is open: keep it for `end`. Resets it and
    /// throws `streamEnded` if the run was ended already.
    func begin(_ stream: any TransportStream) async throws {
        let ended = state.withLock { s -> Bool in
            if !s.ended { s.stream = stream }
            return s.ended
        }
        guard ended else { return }
        await stream.reset(errorCode: ProtocolErrorCode.noError.rawValue)
        throw ReplicationError.streamEnded
    }

    /// Ends the run now, or as soon as it begins.
    func end() async {
        let stream = state.withLock { s in
            s.ended = true
            return s.stream
        }
        await stream?.reset(errorCode: ProtocolErrorCode.noError.rawValue)
    }
}
