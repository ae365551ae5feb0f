@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A tmpfs of a few MiB mounted for one test (root only): a filesystem that
/// fills up at once, with no loop device.
private struct SmallTmpfs {
    let path: String

    init(megabytes: Int) throws {
        path = NSTemporaryDirectory() + "mr-full-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard mount("tmpfs", path, "tmpfs", 0, "size=\(megabytes)m,mode=0700") == 0 else {
            let e = errno
            try? FileManager.default.removeItem(atPath: path)
            throw TransportError.system(call: "mount tmpfs on \(path)", errno: e)
        }
    }

    func unmount() {
        umount2(path, Int32(MNT_DETACH))
        try? FileManager.default.removeItem(atPath: path)
    }
}

private let isRoot = getuid() == 0

@Suite("Region backing: full filesystems and files truncated under the mapping", .serialized)
struct RegionBackingTests {
    @Test("a file truncated under a region: copies and stores throw why instead of SIGBUS, the scanner fails, other regions go on")
    func truncatedUnderTheMapping() throws {
        let dir = NSTemporaryDirectory() + "mr-trunc-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let chunk = 65536
        let region = try Region(name: "t", backing: .file(path: dir + "/t.bin"), size: 1 << 20, chunkSize: chunk)
        let other = try Region(name: "o", backing: .file(path: dir + "/o.bin"), size: 1 << 20, chunkSize: chunk)
        fillPattern(region.bytes, seed: 3)
        fillPattern(other.bytes, seed: 4)
        let otherBytes = Array(other.bytes)
        let scanner = ChunkHashScanner(region: region)
        #expect(region.failure == nil)
        #expect(try region.copyChunk(2) == Array(region.bytes[2 * chunk..<3 * chunk]))

        // Another process's truncate(2), as far as the mapping can tell.
        try #require(truncate(dir + "/t.bin", 0) == 0)
        // copyChunk checks only the SIGBUS count, never the file's size: that
        // it throws proves the fault was caught (without the guard the
        // process would have died here).
        #expect {
            try region.copyChunk(5)
        } throws: { error in
            guard case Region.Failure.unavailable(let name, let reason) = error else { return false }
            return name == "t" && reason.contains("truncated to 0 bytes")
        }
        #expect(region.failure?.contains("truncated to 0 bytes") == true, "\(region.failure ?? "nil")")
        #expect(throws: Region.Failure.self) { try scanner.changedChunks() }
        // A replica applying a WRITE into a file cut under it fails the same way.
        #expect(throws: Region.Failure.self) { try region.storeChunk(1, [UInt8](repeating: 1, count: chunk)) }
        #expect(throws: Region.Failure.self) { try region.checkBacking() }

        // Untouched by any of that.
        #expect(other.failure == nil)
        #expect(try other.copyChunk(7) == Array(otherBytes[7 * chunk..<8 * chunk]))
        #expect(try ChunkHashScanner(region: other).changedChunks().isEmpty)
    }

    @Test("a truncation is noticed by the size check before anything touches the missing pages")
    func truncationSeenByFstat() throws {
        let dir = NSTemporaryDirectory() + "mr-trunc-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let region = try Region(name: "h", backing: .file(path: dir + "/h.bin"), size: 1 << 20, chunkSize: 65536)
        try #require(truncate(dir + "/h.bin", 300_000) == 0)
        // The SIGBUS count is still 0: checkIntact alone passes...
        #expect(throws: Never.self) { try region.checkIntact() }
        // ...the size check does not, and says what happened.
        #expect(region.failure?.contains("truncated to 300000 bytes") == true, "\(region.failure ?? "nil")")
        #expect(throws: Region.Failure.self) { try region.checkIntact() }
    }

    @Test("a region file on a full filesystem fails at creation naming the path, the size and the free space; nothing is left behind",
          .enabled(if: isRoot, "mounting a tmpfs needs root"))
    func fullFilesystem() throws {
        let tmpfs = try SmallTmpfs(megabytes: 8)
        defer { tmpfs.unmount() }
        let big = tmpfs.path + "/big.bin"
        for allocation in [Region.Allocation.reserved, .sparse] {
            #expect {
                _ = try Region(name: "big", backing: .file(path: big), size: 16 << 20, chunkSize: 65536, allocation: allocation)
            } throws: { error in
                guard case Region.Failure.noSpace(let path, let size, let free) = error else { return false }
                let text = "\(error)"
                return path == big && size == 16 << 20 && free > 0 && free <= 8 << 20
                    && text.contains(big) && text.contains("16777216 bytes (16.0 MiB)") && text.contains("free")
            }
            #expect(!FileManager.default.fileExists(atPath: big), "a failed set-up removes the file it created")
        }

        // A region that fits takes its blocks at once: the next one finds them gone.
        let fits = try Region(name: "fits", backing: .file(path: tmpfs.path + "/fits.bin"), size: 6 << 20, chunkSize: 65536)
        var st = stat()
        try #require(stat(tmpfs.path + "/fits.bin", &st) == 0)
        #expect(Int(st.st_blocks) * 512 >= 6 << 20)

        // An existing file that cannot grow is left as it was: size and bytes.
        let grow = tmpfs.path + "/grow.bin"
        let content = patternBytes(count: 1 << 20, seed: 9)
        try Data(content).write(to: URL(fileURLWithPath: grow))
        #expect(throws: Region.Failure.self) {
            _ = try Region(name: "grow", backing: .file(path: grow), size: 4 << 20, chunkSize: 65536)
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: grow)) == Data(content))
        withExtendedLifetime(fits) {}
    }

    @Test("memreplica peer exporting a region on a full filesystem exits 1 at start with one clear line (no SIGBUS later)",
          .enabled(if: isRoot, "mounting a tmpfs needs root"))
    func exportOnFullFilesystem() async throws {
        let tmpfs = try SmallTmpfs(megabytes: 8)
        defer { tmpfs.unmount() }
        let root = NSTemporaryDirectory() + "mr-fullpeer-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = tmpfs.path + "/r.bin"
        let peer = try ChildProcess(builtExecutable(), ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--state-dir", root,
                                                        "--name", "full", "--control", root + "/c.sock",
                                                        "--export", "r=\(path),size=16M", "--log-level", "error"],
                                    errorPath: root + "/err")
        defer { peer.terminate(grace: .milliseconds(100)) }
        let deadline = ContinuousClock.now + .seconds(30)
        while peer.isRunning {
            // Old behaviour: the peer runs (the sparse file's SIGBUS waits for a mirror).
            try #require(ContinuousClock.now < deadline, "the peer did not exit within 30 s")
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(peer.wait() == 1)
        let lines = (try String(contentsOfFile: root + "/err", encoding: .utf8)).split(separator: "\n")
        #expect(lines.count == 1, "\(lines)")
        let line = String(lines.first ?? "")
        #expect(line.hasPrefix("memreplica: error: no room for region file \(path)"), "\(line)")
        #expect(line.contains("16777216 bytes (16.0 MiB)") && line.contains("free"), "\(line)")
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("a primary's file truncated to 0 while a mirror syncs: the peer process lives, status says why, the mirror's stream ends with region_unavailable, another region keeps replicating")
    func truncatedWhileMirroring() async throws {
        let root = NSTemporaryDirectory() + "mr-truncpeer-\(UUID().uuidString.prefix(8))"
        let shm = "/dev/shm/mr-truncpeer-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: shm, withIntermediateDirectories: true)
        defer {
            try? FileManager.default.removeItem(atPath: root)
            try? FileManager.default.removeItem(atPath: shm)
        }
        let a = shm + "/a.bin", b = shm + "/b.bin"
        try Data(patternBytes(count: 256 << 20, seed: 11)).write(to: URL(fileURLWithPath: a))
        try Data(patternBytes(count: 4 << 20, seed: 12)).write(to: URL(fileURLWithPath: b))
        let exe = try builtExecutable()
        let port = unusedUDPPort()
        let primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root, "--name", "primary",
                                             "--control", root + "/p.sock", "--export", "a=\(a)", "--export", "b=\(b)",
                                             "--log-level", "warning"], errorPath: root + "/primary.log")
        defer { primary.terminate(grace: .milliseconds(200)) }
        let primaryControl = ControlClient(path: root + "/p.sock")
        try await withTimeout(60, "the primary's start") {
            while (try? await primaryControl.status()) == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        let replica = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--state-dir", root,
                                             "--name", "replica", "--control", root + "/r.sock",
                                             "--mirror", "a@127.0.0.1:\(port)=\(shm)/ra.bin",
                                             "--mirror", "b@127.0.0.1:\(port)=\(shm)/rb.bin", "--log-level", "warning"],
                                     errorPath: root + "/replica.log")
        defer { replica.terminate(grace: .milliseconds(200)) }

        // Cut the file as soon as the primary is pushing its initial pass.
        let duringSync = try await withTimeout(60, "the mirror of 'a' starting") { () -> Bool in
            while true {
                let report = try? await primaryControl.status()
                if let mirror = report?.regions.first(where: { $0.name == "a" })?.mirrors?.first, mirror.sentVersion > 0 {
                    return !mirror.synced
                }
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        try #require(truncate(a, 0) == 0)

        let reason = try await withTimeout(20, "status reporting the truncation") { () -> String in
            while true {
                if let error = try await primaryControl.status().regions.first(where: { $0.name == "a" })?.problem { return error }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        #expect(reason.contains("truncated to 0 bytes"), "\(reason)")
        #expect(primary.isRunning, "the primary process died")
        let stats = try await primaryControl.stats()
        #expect(stats.regions.first(where: { $0.name == "a" })?.problem == reason)
        // The mirror heard why (ERROR region_unavailable), and says so.
        let replicaControl = ControlClient(path: root + "/r.sock")
        let heard: String
        do {
            heard = try await withTimeout(20, "the replica hearing why") { () -> String in
                while true {
                    if let error = try? await replicaControl.status().regions.first(where: { $0.name == "a" })?.problem,
                       error.contains("unavailable") {
                        return error
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
        } catch {
            let logs = ["primary", "replica"].map { "\($0): " + ((try? String(contentsOfFile: root + "/\($0).log", encoding: .utf8)) ?? "") }
            Issue.record("logs: \(logs)")
            throw error
        }
        #expect(heard.contains("truncated to 0 bytes"), "\(heard) (truncated during the initial sync: \(duringSync))")

        // Region b goes on: a change to its file reaches the replica.
        let handle = try #require(FileHandle(forWritingAtPath: b))
        try handle.seek(toOffset: 3 << 20)
        try handle.write(contentsOf: Data(repeating: 0xC3, count: 100_000))
        try handle.close()
        let expected = try fileSHA(b)
        try await withTimeout(20, "region b converging") {
            while (try? fileSHA(shm + "/rb.bin")) != expected { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(try await primaryControl.status().regions.first(where: { $0.name == "b" })?.problem == nil)
        #expect(primary.isRunning)
    }
}
