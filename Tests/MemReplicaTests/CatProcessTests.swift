@testable import MemReplica
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("memreplica cat against peer processes", .serialized)
struct CatProcessTests {
    @Test("cat on a lazy replica peer (--mirror ... --lazy) and on the primary peer print the primary's bytes")
    func catPeers() async throws {
        let root = NSTemporaryDirectory() + "mr-cat-\(UUID().uuidString.prefix(8))"
        let shm = "/dev/shm/mr-cat-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root); unlink(shm) }
        let primaryPath = root + "/primary.bin"
        let bytes = patternBytes(count: 8 << 20, seed: 4242)
        try Data(bytes).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        let peers = try await PeerProcessPair(root: root, primaryPath: primaryPath, replicaPath: shm, lazy: true)
        defer { peers.terminate(grace: .milliseconds(300)) }
        let deadline = ContinuousClock.now + .seconds(60)
        let out = root + "/out.bin"
        var rc: Int32 = -1
        // Until the mirror has reached the primary, the region is "not ready yet" (exit 1).
        while rc != 0 {
            try #require(ContinuousClock.now < deadline, "cat on the lazy replica never succeeded")
            rc = try await runShell("'\(exe)' cat r --control '\(root)/r.sock' > '\(out)' 2>/dev/null")
            if rc != 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(try fileSHA(out) == sha256Hex(bytes))
        #expect(try await runShell("'\(exe)' cat r --control '\(root)/p.sock' --offset 100 --length 1000 > '\(out)'") == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(bytes[100..<1100]))
    }
}
