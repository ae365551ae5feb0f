@testable import MemReplica
import Foundation
import Logging
import Testing

/// Builds clients/c (the C client API and its test program) with cc.
func buildCClient(into directory: String) async throws -> String {
    let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    let c = package + "/clients/c"
    let exe = directory + "/client_test"
    let rc = try await runShell("cc -std=c11 -Wall -Wextra -Werror -I'\(c)/include' -o '\(exe)' '\(c)/memreplica_client.c' "
                                + "'\(c)/test/client_test.c' 2>'\(directory)/cc.log'")
    let log = (try? String(contentsOfFile: directory + "/cc.log", encoding: .utf8)) ?? ""
    try #require(rc == 0, "cc failed: \(log)")
    return exe
}

@Suite("The C client API (clients/c)", .serialized)
struct CClientTests {
    @Test("a C reader process on a lazy replica reads the primary's bytes exactly (SHA-256), through its faults")
    func cReaderOnLazyReplica() async throws {
        let f = try await LazyFixture.make(size: 2 << 20, seed: 77)
        let exe = try await buildCClient(into: f.root)
        let out = f.root + "/c.out"
        let rc = try await runShell("'\(exe)' read '\(f.socket)' lazy '\(out)' 2>'\(f.root)/c.err'")
        let err = (try? String(contentsOfFile: f.root + "/c.err", encoding: .utf8)) ?? ""
        #expect(rc == 0, "\(err)")
        #expect(try fileSHA(out) == sha256Hex(Array(f.primary.bytes)))
        #expect(f.mirror.progress.faults >= f.mirror.progress.chunkCount)
        // Errors come back as one line.
        #expect(try await runShell("'\(exe)' read '\(f.socket)' nosuch '\(out)' 2>'\(f.root)/c.err'") == 1)
        let refused = (try? String(contentsOfFile: f.root + "/c.err", encoding: .utf8)) ?? ""
        #expect(refused.contains("no region named 'nosuch'"), "\(refused)")
        #expect(try await runShell("'\(exe)' write '\(f.socket)' lazy 0 2>/dev/null") == 1, "a replica is not writable")
        await f.close()
    }

    @Test("a C writer process on a primary is tracked exactly")
    func cWriterOnPrimary() async throws {
        let f = try PrimaryFixture { _ in .memory }
        let feed = RegionChangeFeed.subscribe(to: f.region, logger: Logger(label: "c-writer"))
        _ = feed.changedChunks()
        let exe = try await buildCClient(into: f.root)
        #expect(try await runShell("'\(exe)' write '\(f.socket)' p \(33 * 65536 + 16)") == 0)
        #expect(feed.changedChunks() == [33])
        #expect(f.region.bytes.load(fromByteOffset: 33 * 65536 + 16, as: UInt64.self) == 0xC0FF_EE00_C0FF_EE01)
        feed.cancel()
        await f.close()
    }
}
