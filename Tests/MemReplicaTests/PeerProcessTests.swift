import Foundation
import Logging
import Testing
@testable import MemReplica
#if canImport(Glibc)
import Glibc
#endif

/// The `memreplica` executable built next to this test bundle.
func builtExecutable() throws -> String {
    let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let dir = (me as NSString).deletingLastPathComponent
    for candidate in [dir + "/memreplica", (dir as NSString).deletingLastPathComponent + "/memreplica"]
    where FileManager.default.isExecutableFile(atPath: candidate) {
        return candidate
    }
    throw TimeoutError(what: "finding the memreplica executable near \(dir)", seconds: 0)
}

@Suite("A real peer process", .serialized)
struct PeerProcessTests {
    @Test("a peer killed (SIGKILL) mid-transfer: the other side gets idleTimeout, no hang")
    func killedMidTransfer() async throws {
        let root = NSTemporaryDirectory() + "mr-kill-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let port = unusedUDPPort()
        let peer = try ChildProcess(builtExecutable(), ["peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root,
                                                        "--name", "victim", "--log-level", "warning"])
        defer { peer.terminate(grace: .milliseconds(100)) }

        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let state = StateDirectory(explicit: root, environment: [:])
        // The peer makes the development CA on start; wait for it.
        let caFile = root + "/dev-pki/ca.pem"
        let deadline = ContinuousClock.now + .seconds(20)
        while !FileManager.default.fileExists(atPath: root + "/dev-pki/victim.pem") && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(FileManager.default.fileExists(atPath: caFile))
        var config = quicConfig(server: false, idle: .seconds(2))
        config.handshakeTimeout = .seconds(2)
        let client = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"),
                                      tls: state.developmentTLS(peerName: "tester", logger: logger),
                                      configuration: config, logger: logger)
        var connection: QUICConnection?
        while connection == nil && ContinuousClock.now < deadline {
            connection = try? await client.connectQUIC(to: PeerAddress(host: "127.0.0.1", port: port))
        }
        let conn = try #require(connection, "the peer process never accepted a connection")
        #expect(conn.peerIdentity.commonName == "victim")

        let sent = Locked(0)
        let stream = try await conn.openQUICStream()
        let writer = Task { () -> TransportError? in
            do {
                let chunk = try Frame.echo([UInt8](repeating: 0x42, count: 256 << 10)).encoded()
                // The peer echoes each frame back; it is the kill that ends this.
                for _ in 0..<200 {
                    try await stream.write(chunk)
                    sent.withLock { $0 += chunk.count }
                    try await Task.sleep(for: .milliseconds(5))
                }
                return nil
            } catch {
                return error as? TransportError
            }
        }
        let sendDeadline = ContinuousClock.now + .seconds(30)
        while sent.withLock({ $0 }) < 4 << 20 {
            try #require(ContinuousClock.now < sendDeadline, "only \(sent.withLock { $0 }) bytes went out before the kill")
            try await Task.sleep(for: .milliseconds(10))
        }
        kill(peer.pid, SIGKILL)
        #expect(peer.wait() == 128 + SIGKILL)
        let killedAt = ContinuousClock.now

        let reason = try await withTimeout(15, "noticing the dead peer") { await conn.waitClosed() }
        #expect(reason == .idleTimeout(seconds: 2))
        #expect(ContinuousClock.now - killedAt < .seconds(8), "took \(ContinuousClock.now - killedAt)")
        let writerError = try await withTimeout(5, "writer ending") { await writer.value }
        #expect(writerError == .idleTimeout(seconds: 2))
        await client.close()
    }
}
