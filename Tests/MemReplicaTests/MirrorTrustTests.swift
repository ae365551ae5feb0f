@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Two peer processes sharing a development CA, started by hand so that each
/// test can give the mirror its own options.
private struct TrustPeers {
    let root: String
    let primaryPath: String
    let port: UInt16
    let primary: ChildProcess
    let exe: String

    init(size: Int, lazy: Bool = false) async throws {
        root = NSTemporaryDirectory() + "mr-trust-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        primaryPath = lazy ? "/dev/shm/mr-trust-\(UUID().uuidString.prefix(8))" : root + "/primary.bin"
        try Data(patternBytes(count: size, seed: 5)).write(to: URL(fileURLWithPath: primaryPath))
        exe = try builtExecutable()
        port = unusedUDPPort()
        primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root, "--name", "primary",
                                         "--control", root + "/p.sock", "--export", "r=\(primaryPath)", "--log-level", "warning"])
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: root + "/p.sock") {
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: "the primary's start", seconds: 60) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// A replica peer mirroring r into `path` with `options` appended to --mirror.
    func replica(into path: String, options: String = "", lazy: Bool = false) throws -> ChildProcess {
        try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--state-dir", root, "--name", "replica",
                               "--control", root + "/r.sock", "--mirror", "r@127.0.0.1:\(port)=\(path)" + options,
                               "--log-level", "critical"] + (lazy ? ["--lazy"] : []))
    }

    /// The replica's region entry once `condition` holds for it.
    func waitReplica(_ what: String, seconds: Double = 30,
                     _ condition: (StatusReport.Region) -> Bool) async throws -> StatusReport.Region {
        let client = ControlClient(path: root + "/r.sock")
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            if let region = try? await client.status().regions.first(where: { $0.role == "replica" }), condition(region) {
                return region
            }
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func stop() {
        primary.terminate(grace: .milliseconds(300))
        if primaryPath.hasPrefix("/dev/shm/") { unlink(primaryPath) }
        try? FileManager.default.removeItem(atPath: root)
    }
}

@Suite("A mirror trusts only its expected primary, and only a region that fits", .serialized)
struct MirrorTrustTests {
    private func sha(_ path: String) -> String? {
        (try? Data(contentsOf: URL(fileURLWithPath: path))).map { sha256Hex(Array($0)) }
    }

    @Test("peer=CN of another peer: refused with a reason, no file made; sha256= of the primary's certificate: mirrored, SHA equal")
    func expectedPrimary() async throws {
        let peers = try await TrustPeers(size: 1 << 20)
        defer { peers.stop() }
        let wrongPath = peers.root + "/wrong.bin"
        let wrong = try peers.replica(into: wrongPath, options: ",peer=someone-else")
        let refused = try await peers.waitReplica("the refusal") { $0.problem != nil }
        #expect(refused.problem?.contains("not the expected primary (peer=someone-else)") == true, "\(refused.problem ?? "")")
        #expect(refused.synced == false)
        #expect(!FileManager.default.fileExists(atPath: wrongPath))
        wrong.terminate(grace: .milliseconds(300))

        let fingerprint = try await ControlClient(path: peers.root + "/p.sock").status().identity.fingerprint
        let rightPath = peers.root + "/right.bin"
        let right = try peers.replica(into: rightPath, options: ",sha256=\(fingerprint)")
        defer { right.terminate(grace: .milliseconds(300)) }
        let synced = try await peers.waitReplica("the sync") { $0.synced == true }
        #expect(synced.problem == nil)
        #expect(sha(rightPath) == sha(peers.primaryPath))
    }

    @Test("a catalog larger than max-size is refused before the file is created")
    func maxSize() async throws {
        let peers = try await TrustPeers(size: 1 << 20)
        defer { peers.stop() }
        let path = peers.root + "/small.bin"
        let replica = try peers.replica(into: path, options: ",max-size=64K")
        defer { replica.terminate(grace: .milliseconds(300)) }
        let refused = try await peers.waitReplica("the refusal") { $0.problem != nil }
        #expect(refused.problem?.contains("the primary's region is 1048576 bytes, but at most 65536 fit") == true,
                "\(refused.problem ?? "")")
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("by default a region larger than the free space where the mirror's file lives is refused, and no file grown",
          .enabled(if: getuid() == 0, "mounts a small tmpfs (root only)"))
    func freeSpace() async throws {
        let peers = try await TrustPeers(size: 4 << 20)
        defer { peers.stop() }
        let mountPoint = peers.root + "/tiny"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=1m") == 0, "mount: \(String(cString: strerror(errno)))")
        defer { umount2(mountPoint, Int32(MNT_DETACH)) }
        let path = mountPoint + "/replica.bin"
        let replica = try peers.replica(into: path)
        defer { replica.terminate(grace: .milliseconds(300)) }
        let refused = try await peers.waitReplica("the refusal") { $0.problem != nil }
        #expect(refused.problem?.contains("where \(path) lives (free space") == true, "\(refused.problem ?? "")")
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("verify: a synced replica equals its primary (exit 0); a chunk changed behind the replica's back is named (exit 1)")
    func verifyCommand() async throws {
        let peers = try await TrustPeers(size: 4 << 20)
        defer { peers.stop() }
        let path = peers.root + "/replica.bin"
        let replica = try peers.replica(into: path)
        defer { replica.terminate(grace: .milliseconds(300)) }
        _ = try await peers.waitReplica("the sync") { $0.synced == true }
        #expect(sha(path) == sha(peers.primaryPath))
        func verify() async throws -> (status: Int32, report: VerifyReport?) {
            let out = peers.root + "/verify.json"
            let status = try await runShell("'\(peers.exe)' verify r --json --control '\(peers.root)/r.sock' >'\(out)' 2>/dev/null")
            let report = try? StatusReport.makeDecoder().decode(VerifyReport.self, from: Data(contentsOf: URL(fileURLWithPath: out)))
            return (status, report)
        }
        let good = try await verify()
        #expect(good.status == 0)
        #expect(good.report?.equal == true && good.report?.compared == 64 && good.report?.differingCount == 0)
        #expect(good.report?.primaryDigest == good.report?.replicaDigest)

        // Corrupt chunk 37 of the replica's file (nothing on the replica tracks it).
        let file = try #require(FileHandle(forWritingAtPath: path))
        try file.seek(toOffset: UInt64(37 * 65536 + 100))
        try file.write(contentsOf: Data([0xde, 0xad]))
        try file.close()
        let bad = try await verify()
        #expect(bad.status == 1)
        #expect(bad.report?.equal == false && bad.report?.differingChunks == [37] && bad.report?.differingCount == 1)
        // Asked of the primary, or of an unknown region: a clear refusal.
        #expect(try await runShell("'\(peers.exe)' verify r --control '\(peers.root)/p.sock' >/dev/null 2>&1") == 1)
        #expect(try await runShell("'\(peers.exe)' verify nope --control '\(peers.root)/r.sock' >/dev/null 2>&1") == 1)
    }

    @Test("a lazy mirror that saw several DIRTY epochs follows a primary restarted on the same file: cat returns the new bytes of chunk K")
    func lazyMirrorAcrossPrimaryRestart() async throws {
        let chunk = 65536, size = 1 << 20
        var peers = try await TrustPeers(size: size, lazy: true)
        defer { peers.stop() }
        let shm = "/dev/shm/mr-trust-replica-\(UUID().uuidString.prefix(8))"
        defer { unlink(shm) }
        let replica = try peers.replica(into: shm, lazy: true)
        defer { replica.terminate(grace: .milliseconds(300)) }
        _ = try await peers.waitReplica("the lazy replica's pull") { $0.chunksPresent == size / chunk && $0.synced == true }
        // Several DIRTY epochs: the primary's hash scanner sees each write.
        let file = try #require(FileHandle(forWritingAtPath: peers.primaryPath))
        defer { try? file.close() }
        for round in 1...4 {
            try file.seek(toOffset: UInt64(round * chunk))
            try file.write(contentsOf: Data(repeating: UInt8(round), count: 64))
            _ = try await peers.waitReplica("DIRTY epoch \(round)") { ($0.lastAppliedVersion ?? 0) >= UInt64(round) }
        }
        // The primary restarts on the same file and state folder; its
        // epochs start over, in a new generation.
        let before = try await peers.waitReplica("the generation") { $0.generation != nil }
        peers.primary.terminate(grace: .seconds(5))
        peers = try await TrustPeers(restarting: peers)
        let k = 9
        let fresh = [UInt8](repeating: 0xA5, count: chunk)
        try file.seek(toOffset: UInt64(k * chunk))
        try file.write(contentsOf: Data(fresh))
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let out = peers.root + "/cat.out"
            let cat = try ChildProcess("/bin/sh", ["-c", "exec '\(peers.exe)' cat r --offset \(k * chunk) --length \(chunk) --control '\(peers.root)/r.sock' >'\(out)'"])
            if cat.wait() == 0, let bytes = FileManager.default.contents(atPath: out), Array(bytes) == fresh { break }
            try #require(ContinuousClock.now < deadline, "cat never returned the new bytes of chunk \(k)")
            try await Task.sleep(for: .milliseconds(200))
        }
        let after = try await peers.waitReplica("the new generation") { $0.generation == (before.generation ?? 0) + 1 }
        #expect(after.regionID == before.regionID)
    }
}

extension TrustPeers {
    /// The same primary started again (same port, file, state folder).
    init(restarting old: TrustPeers) async throws {
        root = old.root
        primaryPath = old.primaryPath
        port = old.port
        exe = old.exe
        primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root, "--name", "primary",
                                         "--control", root + "/p.sock", "--export", "r=\(primaryPath)", "--log-level", "warning"])
        let deadline = ContinuousClock.now + .seconds(60)
        while (try? await ControlClient(path: root + "/p.sock").status()) == nil {
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: "the primary's restart", seconds: 60) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

@Suite("Durable mirrors (durable=true)", .serialized)
struct DurableMirrorTests {
    private func sha(_ path: String) -> String? {
        (try? Data(contentsOf: URL(fileURLWithPath: path))).map { sha256Hex(Array($0)) }
    }

    private func stateFile(_ root: String) -> DurableMirrorState.Record? {
        (try? Data(contentsOf: URL(fileURLWithPath: root + "/mirrors/r.state.json")))
            .flatMap { try? JSONDecoder.durable.decode(DurableMirrorState.Record.self, from: $0) }
    }

    @Test("a durable replica SIGKILLed mid initial sync: restarted, it says incomplete and not synced, cat refuses its bytes, it resumes by delta and ends complete")
    func killedDuringDurableSync() async throws {
        let size = 256 << 20
        let peers = try await TrustPeers(size: size)
        defer { peers.stop() }
        let path = peers.root + "/replica.bin"
        let first = try peers.replica(into: path, options: ",durable=true")
        // Kill it once part of the region has arrived.
        let deadline = ContinuousClock.now + .seconds(60)
        // Once an eighth of the region has arrived (chunks come in order).
        func arrived(at offset: UInt64) -> Bool {
            guard let handle = FileHandle(forReadingAtPath: path) else { return false }
            defer { try? handle.close() }
            guard (try? handle.seek(toOffset: offset)) != nil, let probe = try? handle.read(upToCount: 64) else { return false }
            return probe.contains { $0 != 0 }
        }
        while !arrived(at: UInt64(size / 8)) {
            try #require(ContinuousClock.now < deadline, "the first sync never got far")
            try await Task.sleep(for: .milliseconds(1))
        }
        kill(first.pid, SIGKILL)
        _ = first.wait()
        let record = try #require(stateFile(peers.root), "no state file after the kill")
        #expect(!record.complete, "a copy cut short must not be recorded complete")

        // Restart with the primary out of reach first: it must not claim a whole copy.
        peers.primary.signal(SIGSTOP)
        let second = try peers.replica(into: path, options: ",durable=true")
        defer { second.terminate(grace: .milliseconds(300)) }
        let early = try await peers.waitReplica("the restarted replica's status") { $0.durable != nil }
        #expect(early.synced == false && early.durable?.complete == false)
        let cat = try await runShell("'\(peers.exe)' cat r --length 4096 --control '\(peers.root)/r.sock' >/dev/null 2>&1")
        #expect(cat == 1, "cat must refuse an unsynced replica's bytes")
        peers.primary.signal(SIGCONT)

        let synced = try await peers.waitReplica("the resumed sync", seconds: 60) { $0.synced == true }
        #expect(synced.durable?.complete == true)
        #expect(sha(path) == sha(peers.primaryPath))
        // WRITEs the restarted replica applied: the resume's, nothing else is written.
        let resent = try await ControlClient(path: peers.root + "/r.sock").stats().regions.first?.chunksPushed ?? 0
        #expect(resent > 0 && resent < UInt64(size / 65536), "the resume sent \(resent) chunks of \(size / 65536)")
        let done = try #require(stateFile(peers.root))
        #expect(done.complete && done.size == size)
    }
}
