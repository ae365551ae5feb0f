@testable import MemReplica
@testable import MemReplicaTransportCore
import Foundation
import Testing

@Suite("Transport handshake and mutual TLS", .serialized)
struct TransportHandshakeTests {
    @Test("mTLS handshake succeeds and both sides see each other's identity", arguments: TransportKind.allCases)
    func handshakeSucceeds(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try TransportPair(kind, pki: pki)
        let (conn, serverSide) = try await pair.connect("connect")
        #expect(conn.peerIdentity.commonName == "server")
        #expect(serverSide.peerIdentity.commonName == "client")
        #expect(conn.peerIdentity.fingerprint.count == 64)
        #expect(conn.peerIdentity.fingerprint == pair.server.localIdentity.fingerprint)
        #expect(serverSide.peerIdentity.fingerprint == pair.client.localIdentity.fingerprint)

        let stream = try await conn.openStream()
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
        #expect(await pair.server.connectionSummaries().map(\.identity.commonName) == ["client"])
        await pair.close()
    }

    @Test("a certificate names its peer alike over QUIC (GnuTLS) and TCP (OpenSSL)")
    func sameIdentityOnBothStacks() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var seen: [PeerIdentity] = []
        var local: [PeerIdentity] = []
        for kind in [TransportKind.quic, .tcp] {
            let pair = try TransportPair(kind, pki: pki)
            let (conn, serverSide) = try await pair.connect()
            seen += [conn.peerIdentity, serverSide.peerIdentity]
            local.append(pair.server.localIdentity)
            await pair.close()
        }
        #expect(seen[0] == seen[2], "the server as QUIC and TCP clients see it")
        #expect(seen[1] == seen[3], "the client as QUIC and TCP servers see it")
        #expect(local[0].subject == local[1].subject && local[0].fingerprint == local[1].fingerprint)
        #expect(seen[2].commonName == "server")
    }
}
