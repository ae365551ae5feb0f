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

/// A process's anonymous resident memory (`RssAnon` in /proc/PID/status),
/// in bytes: heap and stacks, where stream buffers live. The region's file
/// pages count as `RssFile` and are left out, so reading the whole region
/// for a mirror does not look like a leak.
private func anonymousResidentBytes(of pid: pid_t) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("RssAnon:") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
        return kib << 10
    }
    return nil
}

@Suite("Memory budget of a real peer process", .serialized)
struct MemoryBudgetProcessTests {
    /// `memreplica peer --memory-budget 8M` exporting 16 MiB: a client opens
    /// 64 streams that ask for 280 MiB (16 whole-region SUBSCRIBEs, 48
    /// half-MiB ECHOs) and never reads, while a replica process mirrors the
    /// region. Without a bound the peer would queue what the flood asks for.
    /// RssAnon is sampled every 5 ms from before the flood until the replica
    /// converged.
    @Test("a flooding client grows a peer process's anonymous RSS by at most its memory budget (plus fixed overhead); a replica process converges meanwhile")
    func floodedPeerProcessStaysWithinBudget() async throws {
        let root = NSTemporaryDirectory() + "mr-flood-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let primaryPath = root + "/primary.bin", replicaPath = root + "/replica.bin"
        let size = 16 << 20, budget = 8 << 20
        try Data(patternBytes(count: size, seed: 41)).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        let port = unusedUDPPort()
        let primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root, "--name", "primary",
                                             "--control", root + "/p.sock", "--export", "r=\(primaryPath)",
                                             "--memory-budget", "8M", "--log-level", "error"])
        defer { primary.terminate(grace: .milliseconds(200)) }
        let started = ContinuousClock.now
        let deadline = started + .seconds(300)
        while !FileManager.default.fileExists(atPath: root + "/p.sock") {
            try #require(ContinuousClock.now < deadline, "the primary never started")
            try await Task.sleep(for: .milliseconds(50))
        }
        var logger = Logger(label: "flooder")
        logger.logLevel = .critical
        let tls = try StateDirectory(explicit: root).developmentTLS(peerName: "flooder", logger: logger)
        // Small receive windows: what the peer sends the flooder stays in the peer's send buffers.
        var config = quicConfig(server: false)
        config.streamReceiveWindow = 64 << 10
        config.connectionReceiveWindow = 256 << 10
        let flooder = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: tls, configuration: config, logger: logger)
        let flood = try await flooder.connect(to: PeerAddress(host: "127.0.0.1", port: port))
        // The baseline: a started peer with one connection, its region not yet read.
        try await Task.sleep(for: .milliseconds(500))
        let baseline = try #require(anonymousResidentBytes(of: primary.pid))

        let peak = Locked(baseline)
        let sampling = Task {
            while !Task.isCancelled {
                if let now = anonymousResidentBytes(of: primary.pid) { peak.withLock { $0 = max($0, now) } }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        let echo = patternBytes(count: 512 << 10, seed: 5)
        var opened: [any TransportStream] = []
        for i in 0..<64 {
            let frames = FrameStream(try await flood.openStream())
            if i % 4 == 0 {
                try await frames.send(.subscribe(.init(name: "r", size: UInt64(size), chunkSize: 65536, mode: .eager,
                                                        hashKey: ChunkHashKey.random().bytes)))
            } else {
                try await frames.send(.echo(echo))
            }
            opened.append(frames.stream)
        }
        // The flood has taken what the budget lets one connection take
        // (half the send half, 2 MiB).
        var buffered = 0
        while buffered < budget / 4 {
            try #require(ContinuousClock.now < deadline, "the flood never filled the peer's buffers (peak \(buffered))")
            try await Task.sleep(for: .milliseconds(50))
            buffered = try await ControlClient(path: root + "/p.sock").stats().peakBufferedBytes ?? 0
        }
        print("flood: buffers filled after \(ContinuousClock.now - started)")
        // A replica process mirrors the region meanwhile, to an equal SHA.
        let replica = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--state-dir", root,
                                             "--name", "replica", "--control", root + "/r.sock",
                                             "--mirror", "r@127.0.0.1:\(port)=\(replicaPath)", "--log-level", "error"])
        defer { replica.terminate(grace: .milliseconds(200)) }
        let want = try fileSHA(primaryPath)
        while (try? fileSHA(replicaPath)) != want {
            try #require(ContinuousClock.now < deadline, "the replica never converged under the flood")
            try await Task.sleep(for: .milliseconds(100))
        }
        print("flood: replica converged after \(ContinuousClock.now - started)")
        // Hold the flood a little longer: whatever it was going to take, it has.
        try await Task.sleep(for: .seconds(1))
        sampling.cancel()
        _ = await sampling.value
        let stats = try await ControlClient(path: root + "/p.sock").stats()
        let growth = peak.withLock { $0 } - baseline
        // Besides what the budget counts a flood costs a little: stream
        // state in ngtcp2 and Swift, the replica's connection, up to
        // `smallFrame` per stream, and malloc's slack (freed buffers stay
        // in the arena of the thread that freed them). Measured 6 to 10 MiB
        // in all; without frame allowances the held echoes alone took 24.
        let overhead = 4 << 20
        #expect(growth <= budget + overhead,
                "anonymous RSS grew \(growth >> 10) KiB from \(baseline >> 10) KiB under a \(budget >> 20) MiB budget; peak buffered \(stats.peakBufferedBytes ?? -1)")
        #expect((stats.peakBufferedBytes ?? Int.max) <= budget)
        #expect(stats.memoryBudgetBytes == budget)
        // The flood was real: the peer buffered its connection's share for it.
        #expect((stats.peakBufferedBytes ?? 0) >= budget / 4)
        print("flood: anonymous RSS \(baseline >> 10) KiB -> peak +\(growth >> 10) KiB; peak buffered \((stats.peakBufferedBytes ?? 0) >> 10) KiB of \(budget >> 10) KiB")

        _ = opened
        await flood.close(errorCode: 0, reason: "done")
        await flooder.close()
    }
}
