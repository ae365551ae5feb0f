import Foundation
import Testing
@testable import MemReplica

@Suite("QUIC handshake and mutual TLS", .serialized)
struct QUICHandshakeTests {
    @Test("mTLS handshake succeeds and both sides see each other's identity")
    func handshakeSucceeds() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try EndpointPair(pki: pki)
        let (conn, serverSide) = try await pair.connect("connect")
        #expect(conn.peerIdentity.commonName == "server")
        #expect(serverSide.peerIdentity.commonName == "client")
        #expect(conn.peerIdentity.fingerprint.count == 64)
        #expect(conn.peerIdentity.fingerprint == pair.server.localIdentity.fingerprint)

        let stream = try await conn.openQUICStream()
        try await stream.write(Array("ping".utf8))
        try await stream.finish()
        let inbound = try await serverSide.acceptStream()
        let got = try await inbound.readAll(limit: 100)
        #expect(got == Array("ping".utf8))
        try await inbound.write(Array("pong".utf8))
        try await inbound.finish()
        #expect(try await stream.readAll(limit: 100) == Array("pong".utf8))
        let stats = await conn.statistics()
        #expect(stats.smoothedRTT > .zero)
        #expect(stats.packetsSent > 0 && stats.packetsReceived > 0)
        await pair.close()
    }
}
