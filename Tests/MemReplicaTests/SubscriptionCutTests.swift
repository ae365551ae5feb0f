@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing

@Suite("a post-copy cut of an eager subscription", .serialized)
struct SubscriptionCutTests {
    @Test("the cut names the chunks changed since the last pass, the mirror's acknowledged version is current, nothing is pushed after it, and a release ends the subscription")
    func cutNamesChangesAndStops() async throws {
        let region = try Region(name: "cut", backing: .memory, size: 1 << 20, chunkSize: 65536)
        // Passes far apart: a change made now is found by the cut, not a pass.
        let exports = RegionExports([.init(region: region)], scanInterval: .seconds(30), logger: silentLogger())
        let pair = try await ReplicationPair(exports: exports)
        let replica = try Region(name: "cut", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: pair.client) }
        try await pollUntil("the mirror to sync", seconds: 10) { mirror.currentProgress.synced }
        let peer = try #require(exports.mirrorStates().first?.peer)
        try await pollUntil("the initial pass acknowledged", seconds: 10) {
            exports.mirrorStates().first.map { $0.acknowledgedVersion == $0.sentVersion } ?? false
        }
        region.bytes.storeBytes(of: 0xfeed as UInt64, toByteOffset: 5 * 65536 + 16, as: UInt64.self)
        region.bytes.storeBytes(of: 0xbeef as UInt64, toByteOffset: 9 * 65536, as: UInt64.self)
        let applied = mirror.currentProgress.lastAppliedVersion
        let cut = exports.cutSubscription(of: "cut", for: peer)
        try await pollUntil("the cut's answer", seconds: 10) { cut.answer != nil }
        let answer = try #require(cut.answer)
        #expect(answer.stale == [5, 9])
        #expect(answer.acknowledgedVersion == applied)
        // Nothing more is pushed, however much changes.
        region.bytes.storeBytes(of: 1 as UInt64, toByteOffset: 11 * 65536, as: UInt64.self)
        exports.requestPass(of: "cut")
        try await Task.sleep(for: .milliseconds(100))
        #expect(mirror.currentProgress.lastAppliedVersion == applied)
        // Called off: the subscription ends (the mirror resubscribes and resumes).
        exports.endCut(of: "cut", for: peer, release: true)
        let ended = await running.result
        #expect(throws: (any Error).self) { try ended.get() }
        await pair.close()
    }
}
