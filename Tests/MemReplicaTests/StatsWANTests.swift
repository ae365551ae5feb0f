@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaWAN
import Foundation
import Testing

/// The statistics against a path whose RTT is known: two `memreplica peer`
/// processes, one in each namespace of the WAN emulator (50 ms RTT).
@Suite("Stats: over the emulated WAN", .serialized)
struct StatsWANTests {
    @Test("over a 50 ms RTT path: both peers report a smoothed RTT within 10 % of it, and replication lag of at least one RTT and well under a second")
    func rttAndLagOverWAN() async throws {
        let rtt = 0.050
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(50))
        let emulator = try WANEmulator(aToB: link.forward, bToA: link.reverse)
        defer { emulator.shutdown() }
        let root = NSTemporaryDirectory() + "mr-stats-wan-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }

        let size = 2 << 20
        let primaryPath = root + "/primary.bin"
        try Data(patternBytes(count: size, seed: 11)).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        // `ip netns exec` puts each peer's sockets in its side; the control
        // sockets are files, reachable from here.
        let primary = try ChildProcess("/usr/bin/env", ["ip", "netns", "exec", emulator.sideA.name, exe, "peer",
                                                        "--listen", "\(emulator.addressA):4433", "--state-dir", root,
                                                        "--name", "primary", "--control", root + "/p.sock",
                                                        "--export", "r=\(primaryPath)", "--log-level", "warning"])
        defer { primary.terminate(grace: .milliseconds(500)) }
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: root + "/p.sock") {
            try #require(ContinuousClock.now < deadline, "the primary never started")
            try await Task.sleep(for: .milliseconds(50))
        }
        let replica = try ChildProcess("/usr/bin/env", ["ip", "netns", "exec", emulator.sideB.name, exe, "peer",
                                                        "--listen", "\(emulator.addressB):4433", "--state-dir", root,
                                                        "--name", "replica", "--control", root + "/r.sock",
                                                        "--mirror", "r@\(emulator.addressA):4433=\(root)/replica.bin",
                                                        "--log-level", "warning"])
        defer { replica.terminate(grace: .milliseconds(500)) }

        let primaryControl = ControlClient(path: root + "/p.sock")
        func synced() async -> StatsReport? {
            guard let report = try? await primaryControl.stats(),
                  let mirror = report.regions.first?.replicas?.first, mirror.synced, mirror.versionLag == 0,
                  mirror.acknowledgedVersion > 0 else { return nil }
            return report
        }
        while await synced() == nil {
            try #require(ContinuousClock.now < deadline, "no synced mirror after 60 s")
            try await Task.sleep(for: .milliseconds(100))
        }
        // Steady state: single writes, each one chunk sent and acknowledged.
        let file = try FileHandle(forUpdating: URL(fileURLWithPath: primaryPath))
        defer { try? file.close() }
        for i in 0..<10 {
            try file.seek(toOffset: UInt64(i * 200_000))
            try file.write(contentsOf: Data([UInt8(i), 0xA5]))
            try await Task.sleep(for: .milliseconds(150))
        }
        while await synced() == nil {
            try #require(ContinuousClock.now < deadline, "the writes were not acknowledged")
            try await Task.sleep(for: .milliseconds(100))
        }

        let report = try await primaryControl.stats()
        let replicaReport = try await ControlClient(path: root + "/r.sock").stats()
        for (side, connection) in [("primary", report.connections.first), ("replica", replicaReport.connections.first)] {
            let c = try #require(connection, "the \(side) reports no connection")
            #expect(abs(c.smoothedRTTSeconds - rtt) <= rtt * 0.1,
                    "the \(side)'s smoothed RTT is \(c.smoothedRTTSeconds * 1000) ms on a 50 ms path")
            #expect(c.minRTTSeconds >= rtt * 0.95 && c.minRTTSeconds <= rtt * 1.1, "min RTT \(c.minRTTSeconds * 1000) ms")
        }
        // Lag runs from sending a chunk to its ACK: never below one round
        // trip; the initial burst queues behind itself, but not for seconds.
        let lag = try #require(report.regions.first?.replicationLag?.sinceStart)
        #expect(lag.count >= UInt64(size / ExportSpec.defaultChunkSize) + 10)
        #expect(lag.p50Seconds >= rtt * 0.95 && lag.p50Seconds < 1, "lag p50 \(lag.p50Seconds * 1000) ms")
        #expect(lag.maxSeconds < 5, "lag max \(lag.maxSeconds) s")
    }
}
