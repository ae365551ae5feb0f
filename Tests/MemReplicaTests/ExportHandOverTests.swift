@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaTransportCore
import Foundation
import Testing

/// The export table's side of a hand-over: a region can start being
/// exported at run time, and one handed over stops being served, to new
/// subscribers and to the mirrors already following it, with
/// `stale_generation` naming the new owner.
@Suite("export hand-over: exports added and relinquished at run time", .serialized)
struct ExportHandOverTests {
    @Test("a relinquished region ends the eager mirror following it and refuses new subscribers, naming the new owner")
    func relinquishEndsMirrorsAndRefuses() async throws {
        let primary = try Region(name: "moving", backing: .memory, size: 1 << 20, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 31)
        let identity = RegionIdentity(id: RegionIdentity.fresh().id, generation: 4)
        let exports = RegionExports([.init(region: primary, identity: identity)], scanInterval: .milliseconds(5),
                                    logger: silentLogger())
        let rp = try await ReplicationPair(exports: exports)
        let replica = try Region(name: "moving", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: rp.client) }
        try await pollUntil("the initial sync", seconds: 30) { exports.mirrorStates().first?.synced == true }

        let moved = RegionExports.Moved(identity: RegionIdentity(id: identity.id, generation: 5), owner: "198.18.0.9:4433")
        #expect(exports.relinquish("moving", movedTo: moved)?.identity == identity)
        #expect(exports.export(named: "moving") == nil)
        #expect(exports.moved("moving") == moved)
        do {
            try await withTimeout(10, "the mirror's end") { try await running.value }
            Issue.record("the mirror went on following a relinquished region")
        } catch ReplicationError.refusedByPeer(let code, let message) {
            #expect(code == ProtocolErrorCode.staleGeneration.rawValue)
            #expect(message.contains("198.18.0.9:4433") && message.contains("generation 5"), "\(message)")
        }

        let frames = FrameStream(try await rp.client.openStream())
        try await frames.send(Frame.subscribe(.init(name: "moving", size: 1 << 20, chunkSize: 65536, mode: .eager,
                                               hashKey: ChunkHashKey.random().bytes)))
        guard case .error(let code, let message)? = try await frames.receive() else {
            Issue.record("a relinquished region was served")
            return
        }
        #expect(code == ProtocolErrorCode.staleGeneration.rawValue)
        #expect(message.contains("198.18.0.9:4433"), "\(message)")
        await rp.close()
    }

    @Test("a region added at run time is served; adding a name twice is refused")
    func addServesAndRefusesDuplicates() async throws {
        let exports = RegionExports([], scanInterval: .milliseconds(5), logger: silentLogger())
        let rp = try await ReplicationPair(exports: exports)
        let primary = try Region(name: "arrived", backing: .memory, size: 1 << 20, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 32)
        let identity = RegionIdentity(id: RegionIdentity.fresh().id, generation: 7)
        try exports.add(.init(region: primary, identity: identity))
        #expect(throws: ExportTableError.alreadyExported("arrived")) { try exports.add(.init(region: primary, identity: identity)) }

        let replica = try Region(name: "arrived", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let mirror = RegionMirror(region: replica, known: identity)
        let running = Task { try await mirror.run(over: rp.client) }
        try await pollUntil("the initial sync", seconds: 30) { exports.mirrorStates().first?.synced == true }
        try await pollUntil("the copy", seconds: 30) { regionSHA(replica) == regionSHA(primary) }
        running.cancel()
        await rp.close()
    }
}
