@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Peers on the same host send QUIC packets up to the loopback MTU
/// (`QUICConfiguration.hostLocalUDPPayloadSize`); any other peer gets
/// packets sized for an unknown path.
@Suite("Host-local QUIC path", .serialized)
struct HostLocalPathTests {
    @Test("the route to one of this host's addresses is recognised, with the loopback MTU; another host's is not")
    func routeProbe() throws {
        // lo's MTU is 65536; IP_MTU reports at most 65535 for IPv4.
        let v4 = try PeerAddress(host: "127.0.0.1", port: 4433).storage
        #expect((HostLocalRoute.payloadSize(to: v4, namespace: nil) ?? 0) >= 65_000)
        #expect(HostLocalRoute.payloadSize(to: v4.mappedToIPv6, namespace: nil) != nil)
        if let v6 = try? PeerAddress(host: "::1", port: 4433).storage {
            #expect((HostLocalRoute.payloadSize(to: v6, namespace: nil) ?? 0) >= 65_000)
        }
        // TEST-NET-2: never this host (unroutable here, or routed away).
        let remote = try PeerAddress(host: "198.51.100.7", port: 4433).storage
        #expect(HostLocalRoute.payloadSize(to: remote, namespace: nil) == nil)
    }

    @Test("handshake datagrams stay within maxUDPPayloadSize; then 4 MiB each way go in host-local-sized packets, intact",
          arguments: [true, false])
    func packetSizes(hostLocal: Bool) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var clientConfig = quicConfig(server: false)
        var serverConfig = quicConfig(server: true)
        if !hostLocal {
            clientConfig.hostLocalUDPPayloadSize = nil
            serverConfig.hostLocalUDPPayloadSize = nil
        }
        let limit = clientConfig.maxUDPPayloadSize
        let local = try #require(QUICConfiguration().hostLocalUDPPayloadSize)
        let pair = try EndpointPair(pki: pki, serverConfig: serverConfig, clientConfig: clientConfig)
        let relay = UDPRelay(toServerPort: pair.server.localAddress.port)
        defer { relay.stop() }
        let address = try PeerAddress(host: "127.0.0.1", port: relay.port)
        async let accepted = pair.server.acceptQUIC()
        let client = try await withTimeout(10, "connect") { try await pair.client.connectQUIC(to: address) }
        let server = try #require(await accepted)
        // ngtcp2 pads every datagram holding a client Initial to the buffer
        // it is given: the handshake must not be handed a 64 KiB one.
        let handshake = relay.largestDatagrams
        #expect(handshake.fromClient <= limit && handshake.fromServer <= limit, "\(relay.firstDatagramSizes)")

        // The server echoes the bytes back: both sides send in bulk.
        let payload = patternBytes(count: 4 << 20, seed: 77)
        let echoing = Task {
            let stream = try await server.acceptStream()
            let bytes = try await stream.readAll(limit: payload.count + 1)
            try await stream.write(bytes)
            try await stream.finish()
        }
        let stream = try await client.openStream()
        try await stream.write(payload)
        try await stream.finish()
        let echoed = try await withTimeout(30, "4 MiB each way over the relay") { () async throws -> [UInt8] in
            try await echoing.value
            return try await stream.readAll(limit: payload.count + 1)
        }
        #expect(sha256Hex(echoed) == sha256Hex(payload))

        let largest = relay.largestDatagrams
        let clientStats = await client.statistics()
        let serverStats = await server.statistics()
        if hostLocal {
            #expect(clientStats.maxUDPPayloadSize == local && serverStats.maxUDPPayloadSize == local)
            #expect(largest.fromClient > limit && largest.fromClient <= local, "client: \(largest.fromClient)")
            #expect(largest.fromServer > limit && largest.fromServer <= local, "server: \(largest.fromServer)")
        } else {
            #expect(clientStats.maxUDPPayloadSize == limit && serverStats.maxUDPPayloadSize == limit)
            #expect(largest.fromClient <= limit && largest.fromServer <= limit, "\(largest)")
        }
        await client.close(errorCode: 0, reason: "")
        await pair.close()
    }
}
