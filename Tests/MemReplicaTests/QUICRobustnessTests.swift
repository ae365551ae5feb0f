@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Testing

@Suite("QUIC robustness", .serialized)
struct QUICRobustnessTests {
    @Test("10,000 garbage datagrams and truncated handshakes leave the server serving")
    func garbageAndTruncatedHandshakes() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = quicConfig(server: true)
        serverConfig.handshakeTimeout = .seconds(2)
        let pair = try EndpointPair(pki: pki, serverConfig: serverConfig)
        let port = pair.server.localAddress.port
        var rng = SystemRandomNumberGenerator()
        var datagrams: [[UInt8]] = []
        for i in 0..<10_000 {
            let size = Int.random(in: 1...1500, using: &rng)
            var d = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
            switch i % 4 {
            case 0:
                // Looks like a QUIC v1 long header, with random CIDs and body.
                if d.count >= 7 { d[0] = 0xc0; d[1] = 0; d[2] = 0; d[3] = 0; d[4] = 1; d[5] = 8 }
            case 1:
                // A "short header" for a connection that does not exist.
                d[0] = 0x40 | (d[0] & 0x3f)
            default:
                break
            }
            datagrams.append(d)
        }
        // Truncated handshakes: Initials padded to 1200 bytes whose
        // protected payload is junk, each from a new "client".
        for _ in 0..<50 {
            var d = [UInt8](repeating: 0, count: 1200)
            for j in 0..<d.count { d[j] = UInt8.random(in: 0...255, using: &rng) }
            d[0] = 0xc0; d[1] = 0; d[2] = 0; d[3] = 0; d[4] = 1
            d[5] = 8   // DCID length
            d[14] = 8  // SCID length
            d[23] = 0  // token length
            d[24] = 0x44; d[25] = 0x90  // payload length 1168 (varint)
            datagrams.append(d)
        }
        sendRawDatagrams(to: port, datagrams)

        // And a real client whose handshake is cut after its first flight.
        let relay = UDPRelay(toServerPort: port)
        relay.allowServerDatagrams(0)
        var cutConfig = quicConfig(server: false)
        cutConfig.handshakeTimeout = .milliseconds(500)
        let cutClient = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.client.tls, configuration: cutConfig)
        await #expect(throws: TransportError.self) {
            _ = try await cutClient.connectQUIC(to: PeerAddress(host: "127.0.0.1", port: relay.port))
        }
        await cutClient.close()
        relay.stop()

        // The server still completes a good handshake and moves data.
        let (conn, serverSide) = try await pair.connect("connect after garbage")
        let s = try await conn.openQUICStream()
        try await s.write(Array("still here".utf8))
        try await s.finish()
        let inbound = try await serverSide.acceptStream()
        #expect(try await inbound.readAll(limit: 100) == Array("still here".utf8))
        await pair.close()
    }
}
