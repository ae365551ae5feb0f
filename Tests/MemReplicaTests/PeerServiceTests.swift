import Foundation
import Logging
import Testing
@testable import MemReplica

@Suite("Peer service", .serialized)
struct PeerServiceTests {
    @Test("echoes streams, reports the connected peer, enforces the echo limit, stops on close")
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
        let stream = try await connection.openQUICStream()
        try await stream.write(payload)
        try await stream.finish()
        #expect(try await stream.readAll(limit: payload.count) == payload)

        let report = await service.statusReport()
        #expect(report.identity.commonName == "server")
        #expect(report.peers.count == 1)
        #expect(report.peers.first?.identity.commonName == "client")
        #expect(report.peers.first?.initiatedLocally == false)
        #expect(report.regions.isEmpty)

        let tooBig = try await connection.openQUICStream()
        let outcome: TransportError? = await {
            do {
                try await tooBig.write([UInt8](repeating: 7, count: DiagnosticEcho.limit + 1))
                try await tooBig.finish()
                _ = try await tooBig.readAll(limit: DiagnosticEcho.limit + 1)
                return nil
            } catch {
                return error as? TransportError
            }
        }()
        #expect(outcome == .streamReset(errorCode: DiagnosticEcho.tooLargeErrorCode))

        // The connection survives a reset stream.
        let after = try await connection.openQUICStream()
        try await after.write([1, 2, 3])
        try await after.finish()
        #expect(try await after.readAll(limit: 10) == [1, 2, 3])

        await server.close()
        _ = try await withTimeout(10, "service shutdown") { await serving.value }
        await client.close()
    }
}
