@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Testing

/// Each failure must surface as its own named error, within a bounded time,
/// whichever transport carries the connection.
@Suite("Transport errors", .serialized)
struct TransportErrorTests {
    /// Connects and returns the client's error (the test fails if it connects).
    private func connectError(_ pair: TransportPair, to address: PeerAddress? = nil) async throws -> TransportError {
        let target = try address ?? pair.serverAddress
        do {
            let conn = try await withTimeout(20, "connect") { try await pair.client.connect(to: target) }
            Issue.record("connected to \(conn.peerIdentity) although the handshake should fail")
            throw TimeoutError(what: "unexpected success", seconds: 0)
        } catch let error as TransportError {
            return error
        }
    }

    @Test("a server certificate from another CA: the client calls the peer untrusted", arguments: TransportKind.allCases)
    func wrongCAOnClient(_ kind: TransportKind) async throws {
        let pki = try TestPKI(), other = try TestPKI(peers: ("server", "client"))
        defer { pki.remove(); other.remove() }
        let pair = try TransportPair(kind, pki: pki, clientTLS: other.client.tls)
        let error = try await connectError(pair)
        guard case .untrustedPeer = error else { Issue.record("got \(error)"); return }
        #expect(error.description.contains("not signed by our CA"))
        await pair.close()
    }

    @Test("a client certificate from another CA: the server refuses it", arguments: TransportKind.allCases)
    func wrongCAOnServer(_ kind: TransportKind) async throws {
        let pki = try TestPKI(), other = try TestPKI()
        defer { pki.remove(); other.remove() }
        // The client trusts the server's CA but its own cert is from elsewhere.
        let tls = TLSConfiguration(caFile: pki.client.tls.caFile, certificateFile: other.client.certificate,
                                   keyFile: other.client.key)
        let pair = try TransportPair(kind, pki: pki, clientTLS: tls)
        let error = try await connectError(pair)
        guard case .rejectedByPeer = error else { Issue.record("got \(error)"); return }
        await pair.close()
    }

    @Test("a client without a certificate is refused with a named error", arguments: TransportKind.allCases)
    func missingClientCertificate(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let tls = TLSConfiguration(caFile: pki.client.tls.caFile, certificateFile: nil, keyFile: nil)
        let pair = try TransportPair(kind, pki: pki, clientTLS: tls)
        #expect(try await connectError(pair) == .clientCertificateMissing)
        await pair.close()
    }

    @Test("no common ALPN fails as alpnMismatch", arguments: TransportKind.allCases)
    func alpnMismatch(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var config = quicConfig(server: false)
        config.applicationProtocols = ["h3"]
        let pair = try TransportPair(kind, pki: pki, clientConfig: config)
        let error = try await connectError(pair)
        guard case .alpnMismatch = error else { Issue.record("got \(error)"); return }
        await pair.close()
    }

    @Test("nothing listening: peerUnreachable within the handshake timeout", arguments: TransportKind.allCases)
    func unreachable(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var config = quicConfig(server: false)
        config.handshakeTimeout = .seconds(1)
        let pair = try TransportPair(kind, pki: pki, clientConfig: config)
        let start = ContinuousClock.now
        let error = try await connectError(pair, to: PeerAddress(host: "127.0.0.1", port: kind.unusedPort))
        guard case .peerUnreachable = error else { Issue.record("got \(error)"); return }
        #expect(ContinuousClock.now - start < .seconds(4))
        await pair.close()
    }

    @Test("a handshake that stalls after the first answer: handshakeTimeout", arguments: TransportKind.allCases)
    func handshakeTimeout(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var config = quicConfig(server: false)
        config.handshakeTimeout = .seconds(1)
        let pair = try TransportPair(kind, pki: pki, clientConfig: config)
        let relay = kind.relay(toServerPort: pair.server.localAddress.port)
        relay.stallHandshake()
        let error = try await connectError(pair, to: PeerAddress(host: "127.0.0.1", port: relay.port))
        #expect(error == .handshakeTimeout(seconds: 1))
        relay.stop()
        await pair.close()
    }

    @Test("a peer that stops answering: idleTimeout on an established connection", arguments: TransportKind.allCases)
    func idleTimeout(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var config = quicConfig(server: false, idle: .seconds(1))
        config.keepAliveInterval = .milliseconds(300)
        let pair = try TransportPair(kind, pki: pki, clientConfig: config)
        let relay = kind.relay(toServerPort: pair.server.localAddress.port)
        let conn = try await withTimeout(10, "connect") {
            try await pair.client.connect(to: PeerAddress(host: "127.0.0.1", port: relay.port))
        }
        relay.cut()
        let start = ContinuousClock.now
        let error = try await withTimeout(10, "idle close") { await conn.waitClosed() }
        #expect(error == .idleTimeout(seconds: 1))
        #expect(ContinuousClock.now - start < .seconds(5))
        await #expect(throws: TransportError.self) { _ = try await conn.openStream().write([1]) }
        relay.stop()
        await pair.close()
    }

    @Test("closing one side reports peerClosed with the code and reason on the other", arguments: TransportKind.allCases)
    func peerClosed(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try TransportPair(kind, pki: pki)
        let (conn, serverSide) = try await pair.connect()
        await serverSide.close(errorCode: 7, reason: "maintenance")
        let error = try await withTimeout(5, "close") { await conn.waitClosed() }
        #expect(error == .peerClosed(errorCode: 7, reason: "maintenance"))
        await pair.close()
    }

    @Test("binding a port in use fails as addressInUse", arguments: TransportKind.allCases)
    func addressInUse(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let first = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                           configuration: quicConfig(server: true), logger: testLogger)
        let taken = try PeerAddress(parsing: "127.0.0.1:\(first.localAddress.port)")
        #expect(throws: TransportError.addressInUse(address: taken.description)) {
            _ = try kind.makeTransport(bind: taken, tls: pki.server.tls, configuration: quicConfig(server: true), logger: testLogger)
        }
        await first.close()
    }

    @Test("bad address syntax is refused with badAddress", arguments: [
        "localhost", "127.0.0.1:port", "127.0.0.1:70000", "::1:4433", "[::1:4433", "no-such-host.invalid:1",
    ])
    func badAddress(_ text: String) {
        #expect {
            _ = try PeerAddress(parsing: text)
        } throws: { error in
            guard case TransportError.badAddress = error else { return false }
            return true
        }
    }

    @Test("addresses users write are understood")
    func goodAddresses() throws {
        let all = try PeerAddress(parsing: ":4433")
        #expect(all.isWildcard && all.port == 4433)
        #expect(try PeerAddress(parsing: "[::1]:5").host == "::1")
        #expect(try PeerAddress(parsing: "127.0.0.1:0").port == 0)
    }

    @Test("TLS files that do not exist fail as tlsConfiguration", arguments: TransportKind.allCases)
    func missingFiles(_ kind: TransportKind) {
        let tls = TLSConfiguration(caFile: "/nonexistent/ca.pem", certificateFile: "/nonexistent/a.pem", keyFile: "/nonexistent/a-key.pem")
        #expect {
            _ = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: tls, configuration: quicConfig(server: true),
                                       logger: testLogger)
        } throws: { error in
            guard case TransportError.tlsConfiguration(let m) = error else { return false }
            return m.contains("/nonexistent/ca.pem")
        }
    }
}
