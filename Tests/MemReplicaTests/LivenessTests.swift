@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Testing

@Suite("Liveness of peers")
struct LivenessTests {
    @Test("with default settings a vanished peer counts as gone within the liveness timeout, on both ends",
          arguments: TransportKind.allCases)
    func vanishedPeer(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = QUICConfiguration()
        serverConfig.acceptsConnections = true
        let pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig, clientConfig: QUICConfiguration())
        let relay = kind.relay(toServerPort: pair.server.localAddress.port)
        async let accepted = pair.server.accept()
        let client = try await withTimeout(10, "connect") {
            try await pair.client.connect(to: PeerAddress(host: "127.0.0.1", port: relay.port))
        }
        let server = try #require(await accepted)
        // A stream open and used, as a mirror's are.
        let stream = try await client.openStream()
        try await stream.write([1, 2, 3])
        let serverStream = try await server.acceptStream()
        #expect(try await serverStream.readExactly(3) == [1, 2, 3])

        relay.cut()
        let cutAt = ContinuousClock.now
        let liveness = QUICConfiguration.defaultLivenessTimeout
        let clientGone = Task { await client.waitClosed() }
        let serverGone = Task { await server.waitClosed() }
        let (clientError, serverError) = try await withTimeout(liveness.seconds + 10, "noticing the vanished peer") {
            (await clientGone.value, await serverGone.value)
        }
        let waited = cutAt.duration(to: .now)
        // The first end to give up says why; over TCP the relay passes its
        // close on, so the other end may see that before its own timeout.
        let errors = [clientError, serverError]
        #expect(errors.contains(.idleTimeout(seconds: liveness.seconds)), "\(errors)")
        for error in errors {
            switch error {
            case .idleTimeout(let seconds): #expect(seconds == liveness.seconds)
            case .connectionLost where kind != .quic: break
            default: Issue.record("ended with \(error)")
            }
        }
        #expect(waited >= liveness - .seconds(1) && waited < liveness + .seconds(2), "both ends noticed after \(waited)")
        relay.stop()
        await pair.close()
    }

    @Test("a quiet connection whose peer answers keep-alives outlives the liveness timeout", arguments: TransportKind.allCases)
    func quietButAlive(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = quicConfig(server: true), clientConfig = quicConfig(server: false)
        serverConfig.livenessTimeout = .seconds(1)
        clientConfig.livenessTimeout = .seconds(1)
        let pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig, clientConfig: clientConfig)
        let (client, server) = try await pair.connect()
        try await Task.sleep(for: .seconds(3))
        let stream = try await client.openStream()
        try await stream.write([7])
        #expect(try await server.acceptStream().readExactly(1) == [7])
        await pair.close()
    }

    @Test("livenessTimeout comes from the config file in seconds, --liveness replaces it, bad values are refused")
    func configuration() throws {
        func parse(_ json: String) throws -> PeerConfiguration {
            try PeerConfiguration(json: Array(json.utf8), file: "peer.json", folder: "/etc/memreplica")
        }
        #expect(try parse("{}").livenessTimeout == nil)
        #expect(try parse(#"{"livenessTimeout": 2.5}"#).livenessTimeout == .milliseconds(2500))
        var configuration = try parse(#"{"livenessTimeout": 10}"#)
        #expect(configuration.livenessTimeout == .seconds(10))
        try configuration.applyCommandLine(liveness: "3")
        #expect(configuration.livenessTimeout == .seconds(3))
        for bad in ["0", "-1", "0.1", "7200", #""5""#, "true"] {
            #expect(throws: PeerConfigurationError.self, "\(bad)") { try parse(#"{"livenessTimeout": \#(bad)}"#) }
        }
        do {
            _ = try parse(#"{"livenessTimeout": 0}"#)
        } catch {
            #expect("\(error)".contains("peer.json: livenessTimeout:"), "\(error)")
        }
        for bad in ["0", "abc", "nan", "inf", "4000"] {
            var c = PeerConfiguration()
            #expect(throws: PeerConfigurationError.self, "\(bad)") { try c.applyCommandLine(liveness: bad) }
        }
    }
}
