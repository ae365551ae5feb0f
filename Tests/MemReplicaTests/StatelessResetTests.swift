@testable import MemReplica
import LinuxShim
import QuicShim
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A plain UDP socket on loopback that sends raw datagrams and collects
/// what comes back.
private final class RawUDPSocket {
    let fd: Int32

    init() {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8], to port: UInt16) {
        var dst = sockaddr_in()
        dst.sin_family = sa_family_t(AF_INET)
        dst.sin_port = port.bigEndian
        dst.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &dst) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    /// Every datagram that arrives until none has for `quiet`.
    func receiveAll(quiet: Duration) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(quiet.milliseconds)) > 0 else { return out }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { out.append(Array(buffer[..<n])) }
        }
    }
}

/// A short-header packet to connection ID `cid`, `length` bytes in all.
private func shortHeaderPacket(cid: [UInt8], length: Int) -> [UInt8] {
    var packet = [0x40 as UInt8] + cid
    while packet.count < length { packet.append(UInt8.random(in: 0...255)) }
    return packet
}

private func expectedToken(_ key: StatelessResetKey, cid bytes: [UInt8]) -> [UInt8] {
    var cid = ngtcp2_cid()
    withUnsafeMutableBytes(of: &cid.data) { $0.copyBytes(from: bytes) }
    cid.datalen = bytes.count
    var token = [UInt8](repeating: 0, count: 16)
    _ = key.bytes.withUnsafeBufferPointer { ngtcp2_crypto_generate_stateless_reset_token(&token, $0.baseAddress, 32, &cid) }
    return token
}

@Suite("Stateless reset")
struct StatelessResetTests {
    @Test("the state folder's reset key is made once, 0600, 32 bytes, and kept")
    func keyFile() throws {
        let root = NSTemporaryDirectory() + "mr-reset-key-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = StateDirectory(explicit: root, environment: [:])
        let first = try state.statelessResetKey()
        let attributes = try FileManager.default.attributesOfItem(atPath: state.statelessResetKeyPath)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect((attributes[.size] as? Int) == 32)
        #expect(try state.statelessResetKey().bytes == first.bytes)
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: state.statelessResetKeyPath))) == first.bytes)
        // Nothing else was left in the folder.
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == ["quic-reset.key"])
        #expect(!"\(first)".contains(first.bytes.map { String($0) }.joined()))
    }

    @Test("several peers starting together on one state folder agree on one key")
    func keyRace() async throws {
        let root = NSTemporaryDirectory() + "mr-reset-race-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = StateDirectory(explicit: root, environment: [:])
        let keys = try await withThrowingTaskGroup(of: [UInt8].self) { group in
            for _ in 0..<8 { group.addTask { try state.statelessResetKey().bytes } }
            return try await group.reduce(into: [[UInt8]]()) { $0.append($1) }
        }
        #expect(Set(keys).count == 1)
    }

    @Test("a reset key file of the wrong size, mode or kind is refused with a clear error")
    func badKeyFile() throws {
        let root = NSTemporaryDirectory() + "mr-reset-bad-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = StateDirectory(explicit: root, environment: [:])
        try state.create()
        let file = state.statelessResetKeyPath
        #expect(FileManager.default.createFile(atPath: file, contents: Data(repeating: 1, count: 31),
                                               attributes: [.posixPermissions: 0o600]))
        #expect { try state.statelessResetKey() } throws: { "\($0)".contains("31 bytes, not 32") }
        try Data(repeating: 1, count: 32).write(to: URL(fileURLWithPath: file))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
        #expect { try state.statelessResetKey() } throws: { "\($0)".contains("readable by others") }
        try FileManager.default.removeItem(atPath: file)
        try FileManager.default.createDirectory(atPath: file, withIntermediateDirectories: false)
        #expect(throws: StateDirectoryError.self) { try state.statelessResetKey() }
    }

    @Test("a packet for an unknown connection is answered by a reset: shorter than it, token from the key, rate limited")
    func answers() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let key = StatelessResetKey.random()
        var config = quicConfig(server: true)
        config.statelessResetKey = key
        let endpoint = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls, configuration: config)
        let port = endpoint.localAddress.port
        let probe = RawUDPSocket()
        let cid = (0..<ConnectionID.localLength).map { _ in UInt8.random(in: 0...255) }

        // A full-sized packet: a reset of 43 bytes ending in the token for the ID.
        probe.send(shortHeaderPacket(cid: cid, length: 1200), to: port)
        let big = probe.receiveAll(quiet: .milliseconds(300))
        #expect(big.count == 1)
        #expect(big.first?.count == QUICEndpoint.largestStatelessReset)
        #expect(big.first.map { Array($0.suffix(16)) } == expectedToken(key, cid: cid))
        #expect(big.first.map { $0[0] & 0xc0 } == 0x40, "a short header with the fixed bit")
        // A small one: one byte shorter than it, so resets cannot ping-pong.
        probe.send(shortHeaderPacket(cid: cid, length: 40), to: port)
        #expect(probe.receiveAll(quiet: .milliseconds(300)).map(\.count) == [39])
        // Too small to be a packet of ours, or a long header: no answer.
        probe.send(shortHeaderPacket(cid: cid, length: QUICEndpoint.smallestDatagramAnsweredByReset - 1), to: port)
        var longHeader = shortHeaderPacket(cid: cid, length: 1200)
        longHeader[0] = 0xe0
        probe.send(longHeader, to: port)
        #expect(probe.receiveAll(quiet: .milliseconds(300)).isEmpty)
        // A flood gets at most a second's worth of resets (plus what refills meanwhile).
        for _ in 0..<2000 { probe.send(shortHeaderPacket(cid: cid, length: 100), to: port) }
        let flood = probe.receiveAll(quiet: .milliseconds(300)).count
        #expect(flood >= 1 && flood <= StatelessResetLimiter.perSecond + 128, "\(flood) resets")
        await endpoint.close()
    }

    @Test("a server restarted with its reset key ends its old connections at once; with a new key only liveness could")
    func restartedServer() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let key = StatelessResetKey.random()
        for keepsKey in [true, false] {
            var serverConfig = quicConfig(server: true)
            serverConfig.statelessResetKey = key
            var clientConfig = quicConfig(server: false)
            clientConfig.livenessTimeout = .seconds(30)
            let first = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls, configuration: serverConfig)
            let client = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.client.tls, configuration: clientConfig)
            let relay = UDPRelay(toServerPort: first.localAddress.port)
            async let accepted = first.acceptQUIC()
            let connection = try await withTimeout(10, "connect") {
                try await client.connectQUIC(to: PeerAddress(host: "127.0.0.1", port: relay.port))
            }
            let serverSide = try #require(await accepted)
            let stream = try await connection.openQUICStream()
            try await stream.write([1])
            #expect(try await serverSide.acceptStream().readExactly(1) == [1])
            // The server vanishes without a word (its CONNECTION_CLOSE is
            // lost) and a new one takes its port.
            relay.cut()
            let cutBefore = relay.serverDatagramsCut
            await first.close()
            // Its CONNECTION_CLOSE must be dropped, not still queued at the relay when it is restored.
            try await withTimeout(5, "the CONNECTION_CLOSE reaching the cut relay") {
                while relay.serverDatagramsCut == cutBefore { try await Task.sleep(for: .milliseconds(2)) }
            }
            if !keepsKey { serverConfig.statelessResetKey = .random() }
            let second = try QUICEndpoint(bind: PeerAddress(host: "127.0.0.1", port: first.localAddress.port),
                                          tls: pki.server.tls, configuration: serverConfig)
            relay.restore()
            let restoredAt = ContinuousClock.now
            if keepsKey {
                let error = try await withTimeout(10, "the reset") { await connection.waitClosed() }
                guard case .connectionLost(let detail) = error else {
                    Issue.record("ended with \(error), not a reset")
                    continue
                }
                #expect(detail.contains("stateless reset"))
                // The next keep-alive (1 s) draws the reset.
                #expect(restoredAt.duration(to: .now) < .seconds(3), "reset after \(restoredAt.duration(to: .now))")
            } else {
                // Keep-alives reach the new server, but its resets carry
                // tokens the client never got: they change nothing.
                try await Task.sleep(for: .seconds(3))
                #expect(connection.core.closeErrorSnapshot == nil)
            }
            relay.stop()
            await client.close()
            await second.close()
        }
    }
}
