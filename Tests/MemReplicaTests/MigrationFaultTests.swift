@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
@testable import MemReplicaWAN
import Foundation
import Testing

/// Faults in the middle of a hand-over, made by the WAN emulator between
/// two peers in this process (its sides are network namespaces: root only).
@Suite("live migration: a connection cut during the hand-over", .serialized,
       .enabled(if: getuid() == 0, "the WAN emulator needs network namespaces (root)"))
struct MigrationFaultTests {
    @Test("the destination's answer to HANDOVER is lost and the connection dies: the source stays fenced, asks again once the path is back, and exactly one peer owns the region, with the frozen bytes",
          arguments: [MigrationMode.precopy, .postcopy])
    func answerLostAfterCommit(mode: MigrationMode) async throws {
        let emulator = try WANEmulator(aToB: .init(delay: .milliseconds(1)), bToA: .init(delay: .milliseconds(1)))
        defer { emulator.shutdown() }
        let root = NSTemporaryDirectory() + "mr-migfault-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pki = try TestPKI(peers: ("peer-a", "peer-b"))
        defer { pki.remove() }
        let pathA = "/dev/shm/mr-migfault-\(UUID().uuidString.prefix(8))-a", pathB = pathA.dropLast() + "b"
        defer { unlink(pathA); unlink(String(pathB)) }
        let region = try Region(name: "moving", backing: .file(path: pathA), size: 4 << 20, chunkSize: 65536)
        fillPattern(region.bytes, seed: 43)
        let storeA = RegionIdentityStore(stateDirectory: StateDirectory(explicit: root + "/a"))
        let storeB = RegionIdentityStore(stateDirectory: StateDirectory(explicit: root + "/b"))
        // A short idle timeout: the lost answer kills the connection soon.
        var configA = quicConfig(server: true, idle: .seconds(2)), configB = configA
        configA.networkNamespace = emulator.sideA
        configB.networkNamespace = emulator.sideB
        let endpointA = try QUICEndpoint(bind: PeerAddress(host: emulator.addressA, port: 0), tls: pki.server.tls,
                                         configuration: configA, logger: silentLogger())
        let endpointB = try QUICEndpoint(bind: PeerAddress(host: emulator.addressB, port: 0), tls: pki.client.tls,
                                         configuration: configB, logger: silentLogger())
        let a = PeerService(endpoint: endpointA,
                            exports: RegionExports([.init(region: region, identity: try storeA.advance(region: "moving", path: pathA))],
                                                   scanInterval: .milliseconds(10), logger: silentLogger()),
                            identities: storeA, logger: silentLogger())
        let runner = MirrorRunner(spec: try MirrorSpec(parsing: "moving@\(emulator.addressA):\(endpointA.localAddress.port)=\(pathB)"),
                                  endpoint: endpointB, logger: silentLogger())
        let b = PeerService(endpoint: endpointB, exports: RegionExports([], scanInterval: .milliseconds(10), logger: silentLogger()),
                            mirrors: [runner], identities: storeB, logger: silentLogger())
        let serving = [Task { await a.run() }, Task { await b.run() }]
        defer {
            Task {
                await endpointA.close()
                await endpointB.close()
                for task in serving { await task.value }
            }
        }
        try await pollUntil("B's mirror to sync", seconds: 30) { runner.synced }
        // Written before, not during: a final flush larger than the
        // congestion window would wait for ACKs that cannot come, and the
        // migration would (rightly) abort instead. This test is about the
        // lost answer.
        let writer = InProcessWriter(region)
        try await Task.sleep(for: .milliseconds(100))
        writer.stop()
        try await pollUntil("B to catch up", seconds: 10) {
            guard case .eager(let m)? = runner.mirror else { return false }
            return sha(m.region) == sha(region)
        }
        // At the freeze, B → A goes dark for 5 s: HANDOVER reaches B, its
        // HANDED_OVER (and every ACK) does not.
        let frozen = Locked<String?>(nil)
        let freeze = MigrationFreeze(pause: {
            frozen.withLock { $0 = sha(region) }
            emulator.setProfiles(aToB: .init(delay: .milliseconds(1)), bToA: .init(delay: .milliseconds(1), lossRate: 1))
            Task {
                try? await Task.sleep(for: .seconds(5))
                emulator.setProfiles(aToB: .init(delay: .milliseconds(1)), bToA: .init(delay: .milliseconds(1)))
            }
        }, resume: { _ in })
        let report = try await a.migrate(.init(region: "moving", destination: "\(emulator.addressB):\(endpointB.localAddress.port)",
                                               mode: mode, maxDowntimeMilliseconds: 1000, timeoutSeconds: 30,
                                               verify: mode == .precopy ? .after : .before),
                                         freeze: freeze)
        #expect(report.handedOver, "\(report.outcome): \(report.reason ?? "")")
        #expect(report.generation == 2)
        #expect((report.downtimeMilliseconds ?? 0) >= 2000, "the answer came only after the path was back")
        // Exactly one owner: B exports at generation 2 (after post-copy,
        // once its fill is done), A never again.
        try await pollUntil("B to export the region", seconds: 20) { b.exports.export(named: "moving") != nil }
        let atB = try #require(b.exports.export(named: "moving"))
        #expect(atB.identity.generation == 2)
        if mode == .precopy {
            #expect(a.exports.export(named: "moving") == nil)
        } else {
            // The fill's end was told on the stream that died: A cannot know
            // it, so it keeps serving its frozen copy to B alone, and says so.
            #expect(report.fillSeconds == nil)
            let status = await a.statusReport()
            #expect(status.regions.first { $0.name == "moving" }?.problem?.contains("not confirmed") == true)
        }
        #expect(throws: RegionIdentityStore.HandedOver.self) { try storeA.advance(region: "moving", path: pathA) }
        #expect(sha(atB.region) == frozen.withLock { $0 }, "the new owner's bytes are not the frozen state")
    }
}
