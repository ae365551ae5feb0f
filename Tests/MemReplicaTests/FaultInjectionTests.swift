@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaWAN
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Peer processes on either side of the WAN emulator: the primary in side
/// A, replicas in side B, all sharing one state folder's development CA.
private final class WANPeers: @unchecked Sendable {
    let emulator: WANEmulator
    let root: String
    let exe: String
    var primary: ChildProcess?
    var replicas: [String: ChildProcess] = [:]
    let primaryPath: String

    init(link: (forward: WANLinkProfile, reverse: WANLinkProfile), primaryBytes: [UInt8], shm: Bool = false) throws {
        emulator = try WANEmulator(aToB: link.forward, bToA: link.reverse)
        root = NSTemporaryDirectory() + "mr-faults-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        primaryPath = shm ? "/dev/shm/mr-faults-\(UUID().uuidString.prefix(8))" : root + "/primary.bin"
        try Data(primaryBytes).write(to: URL(fileURLWithPath: primaryPath))
        exe = try builtExecutable()
    }

    func startPrimary(_ extra: [String] = []) async throws {
        primary = try ChildProcess("/usr/bin/env", ["ip", "netns", "exec", emulator.sideA.name, exe, "peer",
                                                    "--listen", "\(emulator.addressA):4433", "--state-dir", root,
                                                    "--name", "primary", "--control", root + "/p.sock",
                                                    "--export", "r=\(primaryPath)", "--log-level", "warning"] + extra,
                                   errorPath: root + "/primary.err")
        let deadline = ContinuousClock.now + .seconds(60)
        while (try? await ControlClient(path: root + "/p.sock").status()) == nil {
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: "the primary's start", seconds: 60) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// A replica peer named `name` mirroring r into `path`; control socket root/NAME.sock.
    func startReplica(_ name: String, into path: String, lazy: Bool = false, options: String = "",
                      extra: [String] = []) throws {
        replicas[name] = try ChildProcess("/usr/bin/env", ["ip", "netns", "exec", emulator.sideB.name, exe, "peer",
                                                           "--listen", "\(emulator.addressB):\(4433 + replicas.count + 1)",
                                                           "--state-dir", root, "--name", name, "--control", control(name),
                                                           "--mirror", "r@\(emulator.addressA):4433=\(path)" + options,
                                                           "--log-level", "warning"] + (lazy ? ["--lazy"] : []) + extra,
                                           errorPath: root + "/\(name).err")
    }

    func control(_ name: String) -> String { root + "/\(name).sock" }

    /// The replica's region in its own stats once `condition` holds.
    func waitReplica(_ name: String, _ what: String, seconds: Double,
                     _ condition: (StatsReport.Region) -> Bool) async throws -> StatsReport.Region {
        let client = ControlClient(path: control(name))
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            if let region = try? await client.stats().regions.first, condition(region) { return region }
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    func primaryStats() async throws -> StatsReport.Region {
        try #require(try await ControlClient(path: root + "/p.sock").stats().regions.first)
    }

    func stop() {
        for replica in replicas.values { replica.terminate(grace: .milliseconds(500)) }
        primary?.terminate(grace: .milliseconds(500))
        emulator.shutdown()
        if primaryPath.hasPrefix("/dev/shm/") { unlink(primaryPath) }
        try? FileManager.default.removeItem(atPath: root)
    }
}

private func sha(_ path: String) -> String? {
    (try? Data(contentsOf: URL(fileURLWithPath: path))).map { sha256Hex(Array($0)) }
}

@Suite("Fault injection across the WAN emulator", .serialized, .enabled(if: getuid() == 0, "the WAN emulator needs root"))
struct FaultInjectionTests {
    @Test("a 60 s partition while the primary writes: eager and lazy mirrors converge after it, and only the changed chunks cross again")
    func partition() async throws {
        let chunk = 65536, size = 32 << 20
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(10))
        let peers = try WANPeers(link: link, primaryBytes: patternBytes(count: size, seed: 41))
        defer { peers.stop() }
        try await peers.startPrimary()
        let eagerPath = peers.root + "/eager.bin"
        let lazyPath = "/dev/shm/mr-faults-lazy-\(UUID().uuidString.prefix(8))"
        defer { unlink(lazyPath) }
        try peers.startReplica("eager", into: eagerPath)
        try peers.startReplica("lazy", into: lazyPath, lazy: true)
        _ = try await peers.waitReplica("eager", "the eager sync", seconds: 60) { $0.synced == true }
        _ = try await peers.waitReplica("lazy", "the lazy pull", seconds: 60) {
            $0.synced == true && $0.chunksPresent == size / chunk
        }
        #expect(sha(eagerPath) == sha(peers.primaryPath))
        let pulledBefore = try await peers.primaryStats().chunksPulled ?? 0

        // The cable is cut for 60 s; the primary writes 40 chunks meanwhile.
        let cut = WANLinkProfile(lossRate: 1)
        peers.emulator.setProfiles(aToB: cut, bToA: cut)
        let written = (0..<40).map { ($0 * 13 + 5) % (size / chunk) }
        let file = try #require(FileHandle(forWritingAtPath: peers.primaryPath))
        for (i, c) in written.enumerated() {
            try file.seek(toOffset: UInt64(c * chunk + 100))
            try file.write(contentsOf: Data(repeating: UInt8(i + 1), count: 32))
            try await Task.sleep(for: .milliseconds(1500))
        }
        try file.close()
        // Both replicas know they are not current.
        _ = try await peers.waitReplica("eager", "the eager replica noticing", seconds: 60) { $0.synced == false }
        _ = try await peers.waitReplica("lazy", "the lazy replica noticing", seconds: 60) { $0.synced == false }
        peers.emulator.setProfiles(aToB: link.forward, bToA: link.reverse)

        let eager = try await peers.waitReplica("eager", "the eager replica converging", seconds: 60) {
            $0.synced == true && sha(eagerPath) == sha(peers.primaryPath)
        }
        // WRITEs applied on the new connection: exactly the changed chunks.
        #expect(eager.chunksPushed == UInt64(Set(written).count), "re-sent \(eager.chunksPushed ?? 0) chunks")
        _ = try await peers.waitReplica("lazy", "the lazy replica refilling", seconds: 60) {
            $0.synced == true && $0.chunksPresent == size / chunk
        }
        let out = peers.root + "/lazy.out"
        #expect(try await runShell("'\(peers.exe)' cat r --control '\(peers.control("lazy"))' >'\(out)'") == 0)
        #expect(sha(out) == sha(peers.primaryPath))
        let pulledAfter = try await peers.primaryStats().chunksPulled ?? 0
        #expect(pulledAfter - pulledBefore == UInt64(Set(written).count), "pulled \(pulledAfter - pulledBefore) chunks again")
    }

    @Test("the primary SIGKILLed halfway through a 256 MiB initial sync: the replica says not synced (status, attach, HTTP/3), then converges after the restart")
    func primaryKilledMidSync() async throws {
        let size = 256 << 20
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(10), rateBitsPerSecond: 800_000_000)
        let peers = try WANPeers(link: link, primaryBytes: patternBytes(count: size, seed: 42))
        defer { peers.stop() }
        try await peers.startPrimary()
        let path = peers.root + "/replica.bin"
        try peers.startReplica("replica", into: path)
        _ = try await peers.waitReplica("replica", "half the sync", seconds: 120) {
            ($0.chunksPresent ?? 0) >= size / 65536 / 2
        }
        let primary = try #require(peers.primary)
        kill(primary.pid, SIGKILL)
        _ = primary.wait()

        let status = try #require(try await ControlClient(path: peers.control("replica")).status().regions.first)
        #expect(status.synced == false)
        let stats = try #require(try await ControlClient(path: peers.control("replica")).stats().regions.first)
        #expect(stats.synced == false)
        let answer = try AttachedRegion.lookup(controlPath: peers.control("replica"), region: "r")
        #expect(answer.synced == false)
        let cat = try await runShell("'\(peers.exe)' cat r --length 4096 --control '\(peers.control("replica"))' >/dev/null 2>&1")
        #expect(cat == 1, "cat must refuse the bytes of a replica that is not synced")
        // Over HTTP/3, from a reader in the replica's namespace.
        let reader = try CertificateAuthority.initialize(directory: peers.root + "/dev-pki", peers: ["reader"])[0]
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path + "/scripts/h3get.py"
        let h3out = peers.root + "/h3.out"
        _ = try await runShell("ip netns exec \(peers.emulator.sideB.name) timeout 30 python3 '\(script)' --ca '\(reader.tls.caFile)' "
                               + "--cert '\(reader.certificate)' --key '\(reader.key)' --server-name replica "
                               + "\(peers.emulator.addressB):4434 /regions /regions/r/chunks/0 >'\(h3out)' 2>&1")
        struct Reply: Decodable { let status: Int?; let text: String? }
        let replies = ((try? String(contentsOfFile: h3out, encoding: .utf8)) ?? "").split(separator: "\n")
            .compactMap { try? JSONDecoder().decode(Reply.self, from: Data($0.utf8)) }
        try #require(replies.count == 2, "h3get.py: \((try? String(contentsOfFile: h3out, encoding: .utf8)) ?? "")")
        let listing = try JSONDecoder().decode([RegionListing].self, from: Data((replies[0].text ?? "").utf8))
        #expect(listing.first?.synced == false)
        #expect(replies[1].status == 503, "a chunk of a replica that is not synced is not served")

        try await peers.startPrimary()
        _ = try await peers.waitReplica("replica", "convergence after the restart", seconds: 180) {
            $0.synced == true && sha(path) == sha(peers.primaryPath)
        }
        #expect(try AttachedRegion.lookup(controlPath: peers.control("replica"), region: "r").synced == true)
    }

    @Test("10 % loss each way at 50 ms RTT: a 64 MiB sync completes and matches (bbr: cubic gets a few KiB/s there)")
    func heavyLoss() async throws {
        let size = 64 << 20
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(50), lossRate: 0.10)
        let peers = try WANPeers(link: link, primaryBytes: patternBytes(count: size, seed: 43))
        defer { peers.stop() }
        try await peers.startPrimary(["--cc", "bbr"])
        let path = peers.root + "/replica.bin"
        try peers.startReplica("replica", into: path, extra: ["--cc", "bbr"])
        _ = try await peers.waitReplica("replica", "the sync through 10 % loss", seconds: 600) { $0.synced == true }
        #expect(sha(path) == sha(peers.primaryPath))
    }
}
