import Foundation
import Testing
@testable import MemReplica
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
        let v4 = try PeerAddress(host: "127.0.0.1", port: 4433).storage
        // lo's MTU is 65536; IP_MTU reports at most 65535 for IPv4.
        #expect((HostLocalRoute.payloadSize(to: v4, namespace: nil) ?? 0) >= 65_000)
        let mapped = v4.mappedToIPv6
        #expect(HostLocalRoute.payloadSize(to: mapped, namespace: nil) != nil)
        if let v6 = try? PeerAddress(host: "::1", port: 4433).storage {
            #expect((HostLocalRoute.payloadSize(to: v6, namespace: nil) ?? 0) >= 65_000)
        }
        // TEST-NET-2: never this host (unroutable here, or routed away).
        let remote = try PeerAddress(host: "198.51.100.7", port: 4433).storage
        #expect(HostLocalRoute.payloadSize(to: remote, namespace: nil) == nil)
    }

    @Test("handshake datagrams stay within maxUDPPayloadSize; then a 4 MiB stream goes in loopback-sized packets, intact",
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
        let pair = try EndpointPair(pki: pki, serverConfig: serverConfig, clientConfig: clientConfig)
        let relay = UDPRelay(toServerPort: pair.server.localAddress.port)
        defer { relay.stop() }
        let address = try PeerAddress(host: "127.0.0.1", port: relay.port)
        async let accepted = pair.server.acceptQUIC()
        let client = try await withTimeout(10, "connect") { try await pair.client.connectQUIC(to: address) }
        let server = try #require(await accepted)
        // ngtcp2 pads a client Initial to the buffer it is given: the
        // handshake must not be handed a 64 KiB one.
        #expect(relay.largestDatagram <= clientConfig.maxUDPPayloadSize, "\(relay.sizes)")

        let payload = patternBytes(count: 4 << 20, seed: 77)
        let reading = Task {
            let stream = try await server.acceptStream()
            return try await stream.readAll(limit: payload.count + 1)
        }
        let stream = try await client.openStream()
        try await stream.write(payload)
        try await stream.finish()
        let received = try await withTimeout(30, "4 MiB over the relay") { try await reading.value }
        #expect(sha256Hex(received) == sha256Hex(payload))

        let stats = await client.statistics()
        if hostLocal {
            #expect(stats.maxUDPPayloadSize == 65_000)
            #expect(relay.largestDatagram > clientConfig.maxUDPPayloadSize && relay.largestDatagram <= 65_000)
        } else {
            #expect(stats.maxUDPPayloadSize == clientConfig.maxUDPPayloadSize)
            #expect(relay.largestDatagram <= clientConfig.maxUDPPayloadSize)
        }
        await client.close(errorCode: 0, reason: "")
        await pair.close()
    }
}
