@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `memreplica migrate` between two real peer processes: an attached writer
/// process stopped at the freeze, its stores on the new owner, and what
/// each peer does with the region after a restart.
@Suite("memreplica migrate between peer processes", .serialized)
struct MigrationProcessTests {
    private struct Peers {
        let root: String
        let exe: String
        let portA: UInt16
        let portB: UInt16
        var pathA: String { root + "/a.bin" }
        var pathB: String { root + "/b.bin" }
        var socketA: String { root + "/a.sock" }
        var socketB: String { root + "/b.sock" }

        func startA() throws -> ChildProcess {
            try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(portA)", "--state-dir", root, "--name", "peer-a",
                                   "--control", socketA, "--export", "r=\(pathA)", "--log-level", "warning"],
                             errorPath: root + "/a.log")
        }

        func startB() throws -> ChildProcess {
            try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(portB)", "--state-dir", root, "--name", "peer-b",
                                   "--control", socketB, "--mirror", "r@127.0.0.1:\(portA)=\(pathB)", "--log-level", "warning"],
                             errorPath: root + "/b.log")
        }

        func region(_ socket: String) async -> StatusReport.Region? {
            try? await ControlClient(path: socket, timeout: .seconds(2)).status().regions.first { $0.name == "r" }
        }
    }

    private static func waitFor(_ what: String, seconds: Double = 30, _ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while !(await condition()) {
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    private static func bytes(_ path: String, at offset: Int, count: Int) throws -> [UInt8] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        return Array(handle.readData(ofLength: count))
    }

    @Test("an attached writer is stopped at the freeze, its last stores are on the new owner, and after restarts the old owner mirrors while the new one exports")
    func migrateWithAttachedWriterAndRestarts() async throws {
        let root = NSTemporaryDirectory() + "mr-migrate-p-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let peers = Peers(root: root, exe: try builtExecutable(), portA: unusedUDPPort(), portB: unusedUDPPort())
        try Data(patternBytes(count: 16 << 20, seed: 51)).write(to: URL(fileURLWithPath: peers.pathA))
        var a = try peers.startA()
        defer { a.terminate(grace: .milliseconds(300)) }
        try await Self.waitFor("peer A") { await peers.region(peers.socketA) != nil }
        var b = try peers.startB()
        defer { b.terminate(grace: .milliseconds(300)) }
        try await Self.waitFor("B's mirror to sync") { await peers.region(peers.socketB)?.synced == true }

        let offsets = [0, 65536 * 3 + 8, 16 << 20 - 8]
        let writer = try ChildProcess(peers.exe, ["attach-write", "r", "--control", peers.socketA, "--rounds", "0",
                                                  "--offsets"] + offsets.map(String.init))
        defer { writer.terminate(grace: .milliseconds(100)) }
        try await Self.waitFor("the writer to attach") { await peers.region(peers.socketA)?.attached?.isEmpty == false }
        try await Task.sleep(for: .milliseconds(300))

        let report = root + "/report.json"
        let status = try await runShell("'\(peers.exe)' migrate r --to 127.0.0.1:\(peers.portB) --json --timeout 30 "
                                        + "--control '\(peers.socketA)' --state-dir '\(root)' > '\(report)'")
        let json = (try? String(contentsOfFile: report, encoding: .utf8)) ?? ""
        #expect(status == 0, "\(json)")
        let decoded = try StatusReport.makeDecoder().decode(MigrationReport.self, from: Data(json.utf8))
        #expect(decoded.handedOver && decoded.generation == 2)
        #expect(decoded.frozenProcesses == [writer.pid])
        #expect(ProcessFreezer.state(of: writer.pid) == "T", "the writer runs on after the hand-over")
        // The stopped writer's last stores are on the new owner.
        for offset in offsets {
            #expect(try Self.bytes(peers.pathB, at: offset, count: 8) == Self.bytes(peers.pathA, at: offset, count: 8))
        }
        #expect(try Self.bytes(peers.pathB, at: offsets[0], count: 8) != Array(patternBytes(count: 8, seed: 51)))
        #expect(await peers.region(peers.socketB)?.role == "primary")
        #expect(await peers.region(peers.socketB)?.generation == 2)
        // --then mirror: A follows B.
        try await Self.waitFor("A to mirror B") { await peers.region(peers.socketA)?.synced == true }
        #expect(await peers.region(peers.socketA)?.role == "replica")
        writer.signal(SIGKILL)

        // Restarted, each keeps its side: A mirrors (never exports r again), B exports at the next generation.
        a.terminate(grace: .seconds(2))
        b.terminate(grace: .seconds(2))
        b = try peers.startB()
        try await Self.waitFor("B back as the primary") { await peers.region(peers.socketB)?.role == "primary" }
        #expect(await peers.region(peers.socketB)?.generation == 3)
        a = try peers.startA()
        try await Self.waitFor("A back as B's mirror") { await peers.region(peers.socketA)?.synced == true }
        #expect(await peers.region(peers.socketA)?.role == "replica")
        #expect(try fileSHA(peers.pathA) == fileSHA(peers.pathB))

        // Usage errors exit 2; a destination nobody answers aborts with 1, the region unharmed.
        #expect(try await runShell("'\(peers.exe)' migrate r --to 127.0.0.1:\(peers.portA) --mode postcopy "
                                   + "--verify after --control '\(peers.socketB)' 2>/dev/null") == 2)
        #expect(try await runShell("'\(peers.exe)' migrate nosuch --to 127.0.0.1:\(peers.portA) "
                                   + "--control '\(peers.socketB)' 2>/dev/null") == 2)
        #expect(try await runShell("'\(peers.exe)' migrate r --to 127.0.0.1:\(unusedUDPPort()) --timeout 3 "
                                   + "--control '\(peers.socketB)' >/dev/null 2>&1") == 1)
        #expect(await peers.region(peers.socketB)?.role == "primary")
    }
}
