@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Writer processes attached to a primary `memreplica peer` process, their
/// writes mirrored by a replica peer process: what the replica's file ends
/// up holding is compared with the primary's (SHA-256).
@Suite("Attached writer processes through peer processes", .serialized)
struct AttachedWriterProcessTests {
    static let size = 4 << 20

    /// The command line of a writer in `language` ("c": clients/c through
    /// its test program; "swift": AttachedRegion through `memreplica
    /// attach-write`), `rounds` rounds long (0: until killed).
    private func writer(_ language: String, control: String, rounds: Int, seed: Int, cClient: String) throws -> [String] {
        switch language {
        case "c":
            return [cClient, "write-loop", control, "r", "\(rounds)", "\(seed)"]
        default:
            // 64 words spread over the region; round N stores value + N.
            let offsets = (0..<64).map { "\(($0 * 65_543 + seed * 8) % (Self.size / 8) * 8)" }
            return [try builtExecutable(), "attach-write", "r", "--control", control, "--rounds", "\(rounds)",
                    "--value", "\(0x5157_0000 + seed)", "--offsets"] + offsets
        }
    }

    @Test("a writer process attached to a primary peer reaches the replica peer (SHA-256), also when killed mid-write",
          arguments: ["c", "swift"])
    func writerReachesTheReplica(_ language: String) async throws {
        let root = NSTemporaryDirectory() + "mr-writers-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let primaryPath = root + "/primary.bin", replicaPath = root + "/replica.bin"
        try Data(patternBytes(count: Self.size, seed: 5)).write(to: URL(fileURLWithPath: primaryPath))
        let cClient = try await buildCClient(into: root)
        let peers = try await PeerProcessPair(root: root, primaryPath: primaryPath, replicaPath: replicaPath, lazy: false)
        defer { peers.terminate(grace: .milliseconds(500)) }
        let control = root + "/p.sock"

        func replicaConverged(_ what: String) async throws {
            try await withTimeout(60, what) {
                while (try? fileSHA(replicaPath)) != (try fileSHA(primaryPath)) { try await Task.sleep(for: .milliseconds(20)) }
            }
        }
        try await replicaConverged("the initial sync")
        let initial = try fileSHA(primaryPath)

        // A writer that runs its rounds and detaches.
        let finished = try writer(language, control: control, rounds: 50, seed: 1, cClient: cClient)
        let rc = try await runShell(finished.map { "'\($0)'" }.joined(separator: " ") + " >'\(root)/w1.out' 2>&1")
        let output = (try? String(contentsOfFile: root + "/w1.out", encoding: .utf8)) ?? ""
        #expect(rc == 0, "\(output)")
        let written = try fileSHA(primaryPath)
        #expect(written != initial, "the writer changed the primary")
        try await replicaConverged("the writes of a writer that detached")

        // A writer killed with SIGKILL while it writes: the replica must end
        // with the primary's bytes as the writer left them.
        let arguments = try writer(language, control: control, rounds: 0, seed: 2, cClient: cClient)
        let killed = try ChildProcess(arguments[0], Array(arguments.dropFirst()))
        try await withTimeout(30, "the second writer's first writes") {
            while try fileSHA(primaryPath) == written { try await Task.sleep(for: .milliseconds(5)) }
        }
        // Let it write for a while, through several of the primary's scans.
        var changes = 0, last = try fileSHA(primaryPath)
        while changes < 5 {
            try await Task.sleep(for: .milliseconds(20))
            let now = try fileSHA(primaryPath)
            if now != last { changes += 1 }
            last = now
        }
        kill(killed.pid, SIGKILL)
        #expect(killed.wait() == 128 + SIGKILL)
        let final = try fileSHA(primaryPath)
        try await replicaConverged("the writes of a writer killed mid-write")
        #expect(try fileSHA(replicaPath) == final)
        // Both peers are still serving.
        #expect(try await ControlClient(path: control).stats().regions.first?.role == "primary")
        #expect(try await ControlClient(path: root + "/r.sock").stats().regions.first?.role == "replica")
    }

    @Test("a lazy replica peer read by C and Swift reader processes gives the bytes a killed writer left on the primary",
          arguments: ["c", "swift"])
    func readersOfALazyReplicaSeeAKilledWritersBytes(_ language: String) async throws {
        let root = NSTemporaryDirectory() + "mr-readers-\(UUID().uuidString.prefix(8))"
        let shm = "/dev/shm/mr-readers-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root); unlink(shm) }
        let primaryPath = root + "/primary.bin"
        try Data(patternBytes(count: Self.size, seed: 6)).write(to: URL(fileURLWithPath: primaryPath))
        let cClient = try await buildCClient(into: root)
        let peers = try await PeerProcessPair(root: root, primaryPath: primaryPath, replicaPath: shm, lazy: true)
        defer { peers.terminate(grace: .milliseconds(500)) }
        let before = try fileSHA(primaryPath)
        let arguments = try writer(language, control: root + "/p.sock", rounds: 0, seed: 3, cClient: cClient)
        let killed = try ChildProcess(arguments[0], Array(arguments.dropFirst()))
        try await withTimeout(30, "the writer's first writes") {
            while try fileSHA(primaryPath) == before { try await Task.sleep(for: .milliseconds(5)) }
        }
        try await Task.sleep(for: .milliseconds(100))
        kill(killed.pid, SIGKILL)
        #expect(killed.wait() == 128 + SIGKILL)
        let final = try fileSHA(primaryPath)
        // A reader process attached to the replica, faulting chunks in; the
        // replica is told of the last writes one scan and one trip later.
        let out = root + "/read.bin"
        let reader = language == "c"
            ? "'\(cClient)' read '\(root)/r.sock' r '\(out)'"
            : "'\(try builtExecutable())' cat r --control '\(root)/r.sock' > '\(out)'"
        try await withTimeout(60, "a reader of the replica seeing the primary's final bytes") {
            while true {
                if try await runShell(reader + " 2>/dev/null") == 0, (try? fileSHA(out)) == final { return }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
