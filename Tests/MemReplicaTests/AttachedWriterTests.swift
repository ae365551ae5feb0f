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

private func quiet() -> Logger {
    var l = Logger(label: "writer-test")
    l.logLevel = .critical
    return l
}

/// A primary in this process with a control socket that accepts writers.
struct PrimaryFixture {
    let root: String
    let region: Region
    let server: ControlServer
    var socket: String { root + "/c.sock" }

    init(backing: (String) -> Region.Backing) throws {
        root = NSTemporaryDirectory() + "mr-writer-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let region = try Region(name: "p", backing: backing(root), size: 4 << 20, chunkSize: 65536)
        self.region = region
        server = try ControlServer(path: root + "/c.sock", logger: quiet(), attachHandler: { request, process in
            guard request.region == "p" else { return .refused("no region named '\(request.region)' on this peer") }
            return PeerService.attach(request, from: process, toPrimary: region, logger: quiet())
        }) { _ in .error("no status here") }
    }

    func close() async {
        await server.stop()
        try? FileManager.default.removeItem(atPath: root)
    }
}

@Suite("Attached writer processes on a primary", .serialized)
struct AttachedWriterTests {
    @Test("a separate writer process registered through the client API is tracked exactly, while attached and at detach")
    func writerTrackedExactly() async throws {
        let f = try PrimaryFixture { _ in .memory }
        let feed = RegionChangeFeed.subscribe(to: f.region, logger: quiet())
        _ = feed.changedChunks()
        let exe = try builtExecutable()
        // While attached: the peer's scans find the writes before the process leaves.
        let holding = Task {
            try await runShell("'\(exe)' attach-write p --control '\(f.socket)' --offsets \(3 * 65536) \(17 * 65536 + 800) "
                               + "\(40 * 65536 + 65528) --hold-ms 3000 > '\(f.root)/out' 2>&1")
        }
        var seen: [Int] = []
        let deadline = ContinuousClock.now + .seconds(20)
        while Set(seen) != [3, 17, 40] && ContinuousClock.now < deadline {
            seen += feed.changedChunks()
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(seen.sorted() == [3, 17, 40], "scans while the writer is attached")
        #expect(RegionChangeFeed.attachedWriters(of: f.region) == 1)
        let rc = try await holding.value
        let output = (try? String(contentsOfFile: f.root + "/out", encoding: .utf8)) ?? ""
        #expect(rc == 0, "\(output)")
        #expect(f.region.bytes.load(fromByteOffset: 17 * 65536 + 800, as: UInt64.self) == 0x0DDB_A11C_AFE0_0001)

        // Write and detach at once: the last scan at detach reports them.
        #expect(try await runShell("'\(exe)' attach-write p --control '\(f.socket)' --offsets \(9 * 65536) --value 7 >/dev/null") == 0)
        // The session ends when the peer sees the process's socket close.
        try await withTimeout(10, "the writer's detach") {
            while RegionChangeFeed.attachedWriters(of: f.region) > 0 { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(feed.changedChunks() == [9])
        #expect(feed.changedChunks() == [])
        feed.cancel()
        await f.close()
    }

    @Test("a writer killed before any scan is never a silent miss: its chunks (or all) are reported")
    func killedWriterNotMissed() async throws {
        let f = try PrimaryFixture { _ in .memory }
        let feed = RegionChangeFeed.subscribe(to: f.region, logger: quiet())
        _ = feed.changedChunks()
        let exe = try builtExecutable()
        let child = try ChildProcess(exe, ["attach-write", "p", "--control", f.socket, "--offsets", "\(21 * 65536)",
                                           "--hold-ms", "10000"])
        // Wait until it attached and wrote (its first scan is in attachWriter; do not scan the feed).
        let deadline = ContinuousClock.now + .seconds(20)
        while f.region.bytes.load(fromByteOffset: 21 * 65536, as: UInt64.self) == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        kill(child.pid, SIGKILL)
        #expect(child.wait() == 128 + SIGKILL)
        while RegionChangeFeed.attachedWriters(of: f.region) > 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let reported = feed.changedChunks()
        #expect(reported.contains(21), "reported \(reported.count) chunks")
        feed.cancel()
        await f.close()
    }

    @Test("a file-backed primary keeps the hash scanner with an attached writer; bad writer attaches are refused")
    func fileBackedKeepsHashing() async throws {
        let f = try PrimaryFixture { root in .file(path: root + "/p.bin") }
        let feed = RegionChangeFeed.subscribe(to: f.region, logger: quiet())
        _ = feed.changedChunks()
        let exe = try builtExecutable()
        let out = f.root + "/out"
        #expect(try await runShell("'\(exe)' attach-write p --control '\(f.socket)' --offsets 65536 > '\(out)' 2>&1") == 0)
        let said = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        #expect(said.contains("hash scanner"), "\(said)")
        #expect(feed.status.kind == .hashScan)
        #expect(feed.changedChunks() == [1])
        // A replica role on a primary, an unaligned offset: refused, exit 1 and 2.
        #expect(try await runShell("'\(exe)' attach-write nosuch --control '\(f.socket)' --offsets 0 >/dev/null 2>&1") == 1)
        #expect(try await runShell("'\(exe)' attach-write p --control '\(f.socket)' --offsets 3 >/dev/null 2>&1") == 2)
        feed.cancel()
        await f.close()
    }

    @Test("status lists each attached process with its PID and mode, until it detaches")
    func statusListsAttachedProcesses() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let root = NSTemporaryDirectory() + "mr-status-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let region = try Region(name: "p", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let endpoint = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                        configuration: quicConfig(server: true), logger: quiet())
        let service = PeerService(endpoint: endpoint, exports: RegionExports([.init(region: region)], logger: quiet()),
                                  logger: quiet())
        let server = try ControlServer(path: root + "/c.sock", logger: quiet(),
                                       attachHandler: { service.attach($0, from: $1) }) { _ in .error("no status here") }
        func attached() async -> [StatusReport.Region.AttachedProcess]? {
            await service.statusReport().regions.first { $0.name == "p" }?.attached
        }
        #expect(await attached() == [])
        // A lookup without a descriptor is no session: nothing to list.
        _ = try AttachedRegion.lookup(controlPath: root + "/c.sock", region: "p")
        #expect(await attached() == [])
        let writer = try AttachedRegion(controlPath: root + "/c.sock", region: "p", writable: true)
        #expect(await attached() == [.init(pid: getpid(), mode: "writer")])
        writer.detach()
        #expect(await attached() == [])
        await server.stop()
        await endpoint.close()
    }
}
