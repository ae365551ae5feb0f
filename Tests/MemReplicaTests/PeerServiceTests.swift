@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Logging
import Testing

@Suite("Peer service", .serialized)
struct PeerServiceTests {
    @Test("echoes ECHO frames, reports the connected peer, refuses oversize and unexpected frames, stops on close")
    func echoStatusLimitShutdown() async throws {
        let root = NSTemporaryDirectory() + "mr-peer-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = StateDirectory(explicit: root, environment: [:])
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        var serverConfig = QUICConfiguration()
        serverConfig.acceptsConnections = true
        let server = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"),
                                      tls: state.developmentTLS(peerName: "server", logger: logger),
                                      configuration: serverConfig, logger: logger)
        let client = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"),
                                      tls: state.developmentTLS(peerName: "client", logger: logger),
                                      configuration: QUICConfiguration(), logger: logger)
        let service = PeerService(endpoint: server, logger: logger)
        let serving = Task { await service.run() }

        let connection = try await client.connectQUIC(to: PeerAddress(host: "127.0.0.1", port: server.localAddress.port))
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let frames = FrameStream(try await connection.openQUICStream())
        try await frames.send(.echo(payload))
        try await frames.send(.echo([1, 2, 3]))
        try await frames.stream.finish()
        #expect(try await frames.receive() == .echo(payload))
        #expect(try await frames.receive() == .echo([1, 2, 3]))
        #expect(try await frames.receive() == nil)

        let report = await service.statusReport()
        #expect(report.identity.commonName == "server")
        #expect(report.peers.count == 1)
        #expect(report.peers.first?.identity.commonName == "client")
        #expect(report.peers.first?.initiatedLocally == false)
        #expect(report.regions.isEmpty)

        // A frame header over the limit: the peer answers ERROR frame_too_large.
        let tooBig = try await connection.openQUICStream()
        var header: [UInt8] = [0x30]
        VarInt.encode(UInt64(FrameLimits.maxPayload + 1), into: &header)
        try await tooBig.write(header)
        let reply = FrameStream(tooBig)
        #expect(try await reply.receive() == .error(code: ProtocolErrorCode.frameTooLarge.rawValue,
                                                    message: "frame type 0x30 declares \(FrameLimits.maxPayload + 1) bytes (limit \(FrameLimits.maxPayload))"))

        // A stream that starts with anything else is refused the same way.
        let odd = FrameStream(try await connection.openQUICStream())
        try await odd.send(.ack(version: 1))
        guard case .error(let code, _)? = try await odd.receive() else {
            Issue.record("no ERROR for a stream opening with ACK"); return
        }
        #expect(code == ProtocolErrorCode.unexpectedFrame.rawValue)

        // The connection survives refused streams.
        let after = FrameStream(try await connection.openQUICStream())
        try await after.send(.echo([4, 5]))
        try await after.stream.finish()
        #expect(try await after.receive() == .echo([4, 5]))

        await server.close()
        _ = try await withTimeout(10, "service shutdown") { await serving.value }
        await client.close()
    }
}
