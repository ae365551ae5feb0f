@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Foundation
import Testing

/// A peer mirroring many regions of one primary: one connection for all of
/// them, and no per-region work while they are idle.
@Suite("Many regions", .serialized)
struct ManyRegionsTests {
    static let regions = 96
    static let size = 256 << 10

    @Test("96 regions of one primary share one connection, each replica equals its primary, and idle regions do not pass every tick")
    func oneConnectionNoIdleWork() async throws {
        let pki = try TestPKI(peers: ("primary", "replica"))
        let folder = "/dev/shm/mr-many-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let primaries = try (0..<Self.regions).map { i -> Region in
            let r = try Region(name: "r\(i)", backing: .memory, size: Self.size, chunkSize: 65536)
            fillPattern(r.bytes, seed: UInt64(100 + i))
            return r
        }
        let endpointA = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                         configuration: quicConfig(server: true), logger: silentLogger())
        let endpointB = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.client.tls,
                                         configuration: quicConfig(server: true), logger: silentLogger())
        let exports = RegionExports(primaries.map { .init(region: $0) }, logger: silentLogger())
        let a = PeerService(endpoint: endpointA, exports: exports, logger: silentLogger())
        let runners = try primaries.map { r in
            MirrorRunner(spec: try MirrorSpec(parsing: "\(r.name)@127.0.0.1:\(endpointA.localAddress.port)=\(folder)/\(r.name)"),
                         endpoint: endpointB, logger: silentLogger())
        }
        let b = PeerService(endpoint: endpointB, mirrors: runners, logger: silentLogger())
        let serving = [Task { await a.run() }, Task { await b.run() }]
        defer {
            Task {
                await endpointB.close()
                await endpointA.close()
                for t in serving { await t.value }
            }
        }
        try await pollUntil("every mirror synced", seconds: 60) { runners.allSatisfy(\.synced) }
        // More than the 64 connections one identity may hold: only sharing gets here.
        #expect(b.primaryConnections.openCount == 1)
        #expect(await endpointA.connectionSummaries().count == 1)
        for (primary, runner) in zip(primaries, runners) {
            guard case .eager(let m)? = runner.mirror else {
                Issue.record("\(primary.name): no eager mirror"); continue
            }
            #expect(sha(m.region) == sha(primary), "\(primary.name)")
        }

        // Idle: a second of nothing written costs each subscription at
        // most its idle pass (once a second), not a pass per 20 ms tick.
        let before = exports.mirrorStates().reduce(0) { $0 + $1.passes }
        try await Task.sleep(for: .seconds(1))
        let idlePasses = exports.mirrorStates().reduce(0) { $0 + $1.passes } - before
        #expect(idlePasses <= UInt64(3 * Self.regions), "\(idlePasses) passes in 1 s over \(Self.regions) idle regions")

        // A write into the first and the last region still arrives within a tick or two.
        let began = ContinuousClock.now
        for r in [primaries.first!, primaries.last!] { r.bytes.storeBytes(of: 0xfeed_f00d, toByteOffset: 4096, as: UInt64.self) }
        try await pollUntil("both writes replicated", seconds: 10) {
            [runners.first!, runners.last!].allSatisfy { runner in
                guard case .eager(let m)? = runner.mirror else { return false }
                return m.region.bytes.load(fromByteOffset: 4096, as: UInt64.self) == 0xfeed_f00d
            }
        }
        #expect(began.duration(to: .now) < .milliseconds(500))
        for (primary, runner) in zip(primaries, runners) {
            guard case .eager(let m)? = runner.mirror else { continue }
            #expect(sha(m.region) == sha(primary), "\(primary.name) after the writes")
        }
    }
}
