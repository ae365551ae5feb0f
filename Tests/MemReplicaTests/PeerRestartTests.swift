@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("A restarted primary process", .serialized)
struct PeerRestartTests {
    @Test("a primary SIGKILLed mid-sync and restarted on its port at once: the mirror is back within seconds, files identical",
          arguments: [TransportKind.quic, .tcp])
    func restartedPrimary(_ kind: TransportKind) async throws {
        let root = NSTemporaryDirectory() + "mr-restart-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let primaryPath = root + "/primary.bin", replicaPath = root + "/replica.bin"
        let size = 64 << 20
        try Data(patternBytes(count: size, seed: 31)).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        let port = kind == .quic ? unusedUDPPort() : unusedTCPPort()
        func startPrimary() throws -> ChildProcess {
            try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--transport", kind.rawValue, "--state-dir", root,
                                   "--name", "primary", "--control", root + "/p.sock", "--export", "r=\(primaryPath)",
                                   "--log-level", "warning"])
        }
        var primary = try startPrimary()
        defer { primary.terminate(grace: .milliseconds(200)) }
        let deadline = ContinuousClock.now + .seconds(90)
        while !FileManager.default.fileExists(atPath: root + "/p.sock") {
            try #require(ContinuousClock.now < deadline, "the primary never started")
            try await Task.sleep(for: .milliseconds(20))
        }
        let replica = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--transport", kind.rawValue,
                                             "--state-dir", root, "--name", "replica", "--control", root + "/r.sock",
                                             "--mirror", "r@127.0.0.1:\(port)=\(replicaPath)", "--log-level", "warning"])
        defer { replica.terminate(grace: .milliseconds(200)) }

        // Kill the primary once part of the region has arrived.
        while !Self.holdsData(replicaPath, at: UInt64(size / 8)) {
            try #require(ContinuousClock.now < deadline, "the initial sync never started")
            try await Task.sleep(for: .milliseconds(1))
        }
        kill(primary.pid, SIGKILL)
        #expect(primary.wait() == 128 + SIGKILL)
        let midSync = !Self.holdsData(replicaPath, at: UInt64(size - 4096))
        // Bytes change while no primary runs: whatever the replica held,
        // only the restarted primary can bring it level.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: primaryPath))
        for offset in [0, size / 2, size - 65536] {
            try handle.seek(toOffset: UInt64(offset))
            handle.write(Data(patternBytes(count: 65536, seed: UInt64(offset) + 5)))
        }
        try handle.close()
        let expected = try Self.sha(primaryPath)

        let restartedAt = ContinuousClock.now
        primary = try startPrimary()
        // Back: the restarted primary lists the replica among its peers.
        var reconnectedAfter: Duration?
        while reconnectedAfter == nil {
            try #require(restartedAt.duration(to: .now) < .seconds(60), "the mirror never came back")
            if let status = try? await ControlClient(path: root + "/p.sock", timeout: .seconds(1)).status(),
               status.peers.contains(where: { $0.identity.commonName == "replica" }) {
                reconnectedAfter = restartedAt.duration(to: .now)
            } else {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        while (try? Self.sha(replicaPath)) != expected {
            try #require(restartedAt.duration(to: .now) < .seconds(60), "the replica never converged")
            try await Task.sleep(for: .milliseconds(50))
        }
        let convergedAfter = restartedAt.duration(to: .now)
        let measured = "\(kind): reconnected \(reconnectedAfter!), converged \(convergedAfter) after the restart (killed mid-sync: \(midSync))"
        #expect(reconnectedAfter! < .seconds(5), "\(measured)")
        #expect(convergedAfter < .seconds(15), "\(measured)")
        if ProcessInfo.processInfo.environment["MEMREPLICA_TEST_REPORT"] != nil { print(measured) }
    }

    private static func sha(_ path: String) throws -> String {
        sha256Hex(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
    }

    /// Whether the file holds non-zero bytes (the primary's) at `offset`.
    private static func holdsData(_ path: String, at offset: UInt64) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: offset)) != nil, let probe = try? handle.read(upToCount: 64) else { return false }
        return probe.contains { $0 != 0 }
    }
}
