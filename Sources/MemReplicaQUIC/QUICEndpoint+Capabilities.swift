import MemReplicaSystem
import MemReplicaTransportCore

/// QUIC's loop serves streams in the turn their bytes arrive
/// (`LoopServedStream`), and 0-RTT carries a first request
/// (`EarlyDataTransport`).
extension QUICEndpoint: TransportEventLoop, EarlyDataTransport {
    package func connect(to address: PeerAddress, replaySafeEarlyData: [UInt8]) async throws
        -> (connection: any TransportConnection, stream: any TransportStream) {
        let (connection, stream) = try await connectQUIC(to: address, replaySafeEarlyData: replaySafeEarlyData)
        return (connection, stream)
    }
}

extension QUICStreamCore: LoopStream {
    package var loop: any TransportEventLoop { connection.endpoint }
}

extension QUICStream: LoopServedStream {
    package var onLoop: any LoopStream { core }

    package func readOnLoop(_ reader: any LoopStreamReader) async throws {
        let core = self.core
        try await Delivery<Void>.wait { done in
            core.connection.endpoint.post { core.startLoopReading(reader, done: done) }
        }
    }
}
