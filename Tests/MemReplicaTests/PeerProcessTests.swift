@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Foundation
import Logging
import Testing
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

@Suite("Replication between peer processes", .serialized)
struct PeerProcessReplicationTests {
    let root = NSTemporaryDirectory() + "mr-resume-\(UUID().uuidString.prefix(8))"
    var replicaPath: String { root + "/replica.bin" }

    private func sha(_ path: String) throws -> String {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return sha256Hex(Array(data))
    }

    /// Whether the replica file holds primary bytes (never all zeros) at `offset`.
    private func replicaHasArrived(at offset: UInt64) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: replicaPath) else { return false }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset)) != nil, let probe = try? handle.read(upToCount: 64) else { return false }
        return probe.contains { $0 != 0 }
    }

    @Test("a replica peer SIGKILLed mid initial sync and restarted resumes with less than a full copy; files end identical")
    func killReplicaMidSync() async throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let primaryPath = root + "/primary.bin"
        try Data(patternBytes(count: 256 << 20, seed: 99)).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        let primaryPort = unusedUDPPort()
        let primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(primaryPort)", "--state-dir", root, "--name", "primary",
                                             "--control", root + "/p.sock", "--export", "r=\(primaryPath)", "--log-level", "warning"])
        defer { primary.terminate(grace: .milliseconds(200)) }
        func startReplica() throws -> ChildProcess {
            try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--state-dir", root, "--name", "replica",
                                   "--control", root + "/r.sock", "--mirror", "r@127.0.0.1:\(primaryPort)=\(replicaPath)",
                                   "--log-level", "warning"])
        }
        // Wait for the primary to have made the development CA, so both share it.
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: root + "/dev-pki/primary.pem") {
            try #require(ContinuousClock.now < deadline, "the primary never started")
            try await Task.sleep(for: .milliseconds(50))
        }
        let first = try startReplica()
        // Kill it once part of the region has arrived (the file fills chunk by
        // chunk; the pass's lanes bring chunks a little out of order, so
        // probing at 40 MiB leaves at least 32 MiB arrived).
        var killed = false
        while !killed {
            try #require(ContinuousClock.now < deadline, "the first sync never started")
            if replicaHasArrived(at: 40 << 20) {
                kill(first.pid, SIGKILL)
                killed = true
            } else {
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        #expect(first.wait() == 128 + SIGKILL)
        // What the killed replica left: chunks that differ from the primary's
        // (not arrived, or cut off mid-copy) are what a resume must send.
        let chunkSize = 64 << 10
        let primaryBytes = try Data(contentsOf: URL(fileURLWithPath: primaryPath))
        let leftBytes = try Data(contentsOf: URL(fileURLWithPath: replicaPath))
        let missing = (0..<4096).filter { chunk in
            let range = chunk * chunkSize..<(chunk + 1) * chunkSize
            return leftBytes.count < range.upperBound || primaryBytes[range] != leftBytes[range]
        }.count
        // Some arrived (it was cut at 40 MiB or later), not all.
        #expect(missing > 0 && missing < 4096 - 512, "\(missing) chunks missing after the kill")
        let second = try startReplica()
        defer { second.terminate(grace: .milliseconds(200)) }
        while try sha(primaryPath) != (try? sha(replicaPath)) {
            try #require(ContinuousClock.now < deadline, "the restarted replica never converged")
            try await Task.sleep(for: .milliseconds(100))
        }
        // The restarted replica's own counters: one connection, which brought
        // exactly the chunks that were missing, no more.
        // SYNCED (every chunk present) follows the pass's last WRITE.
        var reported: StatsReport.Region?
        while reported?.chunksPresent != 4096 {
            try #require(ContinuousClock.now < deadline, "the restarted replica never reported synced: \(String(describing: reported))")
            try await Task.sleep(for: .milliseconds(20))
            reported = try await ControlClient(path: root + "/r.sock").stats().regions.first { $0.name == "r" }
        }
        let region = try #require(reported)
        #expect(region.reconnects == 0)
        #expect(region.chunksPushed == UInt64(missing), "the resume sent \(region.chunksPushed ?? 0) chunks for \(missing) missing")
    }
}
