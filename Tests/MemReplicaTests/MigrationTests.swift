@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Crypto
import Foundation
import Testing

@Suite("live migration: pre-copy hand-over, fencing, aborts", .serialized)
struct MigrationTests {
    @Test("pre-copy hands a written region over: the destination owns it at g+1 with the frozen bytes, the source is fenced, and it comes back A → B → A")
    func precopyRoundTrip() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        try await Task.sleep(for: .milliseconds(200))
        let frozenAtA = Locked<String?>(nil)
        let freeze = writer.freeze(next: { peers.b.exports.export(named: "moving")?.region })
        let recordingFreeze = MigrationFreeze(pause: {
            await freeze.pause()
            frozenAtA.withLock { $0 = sha(regionA) }
        }, resume: { handedOver in
            // Before the writer moves on: the destination's copy is the frozen state.
            if handedOver, let b = peers.b.exports.export(named: "moving")?.region {
                #expect(sha(b) == frozenAtA.withLock { $0 }, "the destination's bytes are not the source's frozen state")
            }
            await freeze.resume(handedOver)
        })
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 30),
                                               freeze: recordingFreeze)
        #expect(report.handedOver, "\(report.reason ?? "")")
        #expect(report.generation == 2)
        #expect(report.downtimeMilliseconds != nil)
        #expect(report.bytesSent > 0, "the writer's changes travelled during the rounds")
        #expect(peers.a.exports.export(named: "moving") == nil)
        #expect(peers.a.exports.moved("moving")?.identity.generation == 2)
        let atB = try #require(peers.b.exports.export(named: "moving"))
        #expect(atB.identity.generation == 2)
        #expect(peers.b.mirrors.isEmpty)
        // stats and Prometheus count it.
        let stats = await peers.a.statsReport()
        #expect(stats.migrations?.first { $0.region == "moving" }?.outcomes == ["handed over": 1])
        let prometheus = PrometheusStatistics()
        prometheus.update(from: stats)
        let exposition = String(decoding: prometheus.exposition(), as: UTF8.self)
        #expect(exposition.contains("memreplica_migrations_total{region=\"moving\",outcome=\"handed over\"} 1"), "\(exposition)")
        #expect(exposition.contains("memreplica_migration_last_downtime_seconds{region=\"moving\"}"))
        // Both sides' state folders say so: A never exports it again, B does.
        #expect(throws: RegionIdentityStore.HandedOver.self) { try peers.a.identities!.advance(region: "moving", path: peers.pathA) }
        #expect(try peers.b.identities!.takenOver(region: "moving", path: peers.pathB)?.generation == 2)

        // The writer goes on at B; A mirrors B (--then mirror) and converges.
        try await pollUntil("the writer to store at B", seconds: 10) { writer.stores > 0 && peers.a.mirrors.first?.synced == true }
        let back = try await peers.b.migrate(.init(region: "moving", destination: peers.addressA, timeoutSeconds: 30),
                                             freeze: writer.freeze(next: { peers.a.exports.export(named: "moving")?.region }))
        #expect(back.handedOver, "\(back.reason ?? "")")
        #expect(back.generation == 3)
        let home = try #require(peers.a.exports.export(named: "moving"))
        #expect(home.identity.generation == 3)
        writer.stop()
        try await Task.sleep(for: .milliseconds(50))
        // B mirrors A again; once synced it holds what A holds.
        try await pollUntil("B to mirror A again", seconds: 20) {
            guard let runner = peers.b.mirrors.first, runner.synced, case .eager(let m)? = runner.mirror else { return false }
            return sha(m.region) == sha(home.region)
        }
    }

    @Test("a destination that does not mirror the region refuses it, unless it accepts migrations: then it mirrors, syncs and takes it over")
    func destinationStartsItsOwnMirror() async throws {

        let peers = try await MigrationPeers.start(mirrored: false)
        defer { peers.stopSoon() }
        #expect(peers.b.mirrors.isEmpty)
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 30, then: .stop),
                                               freeze: writer.freeze(next: { nil }))
        #expect(report.handedOver, "\(report.reason ?? "")")
        #expect(report.bytesSent >= UInt64(MigrationPeers.size), "the whole region travelled to the new mirror")
        let atB = try #require(peers.b.exports.export(named: "moving"))
        #expect(atB.region.backing == .file(path: peers.root + "/accepted/moving.region"))
        writer.stop()
        #expect(sha(atB.region) == sha(regionA))
        #expect(peers.b.identities!.allTakenOver().map(\.name) == ["moving"])
        #expect(peers.a.mirrors.isEmpty, "--then stop")
    }

    @Test("a destination that neither mirrors the region nor accepts migrations refuses: the source keeps it")
    func destinationRefuses() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        // A second region A exports, which B does not mirror.
        let other = try Region(name: "other", backing: .memory, size: 1 << 20, chunkSize: 65536)
        try peers.a.exports.add(.init(region: other))
        let report = try await peers.a.migrate(.init(region: "other", destination: peers.addressB, timeoutSeconds: 10))
        #expect(!report.handedOver)
        #expect(report.reason?.contains("migration refused") == true, "\(report.reason ?? "")")
        #expect(peers.a.exports.export(named: "other") != nil)
    }

    @Test("a mirror that holds other bytes than the source fails the hand-over's digest: nothing is committed and the source keeps the region")
    func digestMismatchAborts() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        guard case .eager(let mirror)? = peers.b.mirrors.first?.mirror else {
            Issue.record("no eager mirror at B")
            return
        }
        // A byte the source never rewrites, changed behind the mirror's back.
        mirror.region.bytes[12345] ^= 0xff
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 20))
        #expect(!report.handedOver)
        #expect(report.reason?.contains("hand-over digest mismatch") == true, "\(report.reason ?? "")")
        #expect(peers.a.exports.export(named: "moving")?.identity.generation == 1)
        #expect(peers.b.exports.export(named: "moving") == nil)
        #expect(try peers.a.identities!.record(region: "moving", path: peers.pathA)?.handOver == nil, "an abandoned hand-over stays recorded")
        #expect(try peers.b.identities!.takenOver(region: "moving", path: peers.pathB) == nil)
    }

    @Test("--verify after: the destination commits before the check, the check follows and passes; a copy that differs is handed over but reported, on both sides")
    func verifyAfterCommit() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 30,
                                                     then: .stop, verify: .after),
                                               freeze: writer.freeze(next: { nil }))
        #expect(report.handedOver && report.verified == true, "\(report)")
        #expect(report.digestMilliseconds == nil, "the source hashed during the downtime")
        let atB = try #require(peers.b.exports.export(named: "moving")).region
        writer.stop()
        #expect(sha(atB) == sha(regionA))

        // A copy changed behind the mirror's back: the hand-over stands, the difference is told.
        let peers2 = try await MigrationPeers.start()
        defer { peers2.stopSoon() }
        guard case .eager(let mirror)? = peers2.b.mirrors.first?.mirror else {
            Issue.record("no eager mirror at B")
            return
        }
        mirror.region.bytes[12345] ^= 0xff
        let bad = try await peers2.a.migrate(.init(region: "moving", destination: peers2.addressB, timeoutSeconds: 30,
                                                   then: .stop, verify: .after))
        #expect(bad.handedOver && bad.verified == false, "\(bad)")
        let status = await peers2.b.statusReport()
        let problem = status.regions.first { $0.name == "moving" }?.problem ?? ""
        #expect(problem.contains("differed from the source's frozen region"), "\(problem)")
    }

    @Test("the destination gone during pre-copy rounds: the migration aborts, the source keeps the region and its writers run on")
    func destinationLostAborts() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        let freeze = writer.freeze(next: { nil })
        // A budget no estimate meets: the rounds go on until B is gone.
        async let migrated = peers.a.migrate(.init(region: "moving", destination: peers.addressB,
                                                   maxDowntimeMilliseconds: 0.001, timeoutSeconds: 4), freeze: freeze)
        try await Task.sleep(for: .seconds(1))
        await peers.b.endpoint.close()
        let report = try await migrated
        #expect(!report.handedOver)
        #expect(report.downtimeMilliseconds == nil, "the writers were frozen")
        #expect(peers.a.exports.export(named: "moving")?.identity.generation == 1)
        let before = writer.stores
        try await pollUntil("the writer to go on", seconds: 5) { writer.stores > before }
        let status = await peers.a.statusReport()
        #expect(status.regions.first { $0.name == "moving" }?.lastMigration?.outcome == "aborted")
    }

    @Test("requests that cannot start are refused with a reason: unknown region, bad address, a replica")
    func badRequests() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        await #expect(throws: MigrationError.self) { try await peers.a.migrate(.init(region: "nosuch", destination: peers.addressB)) }
        await #expect(throws: MigrationError.self) { try await peers.a.migrate(.init(region: "moving", destination: "not an address")) }
        await #expect(throws: MigrationError.self) { try await peers.b.migrate(.init(region: "moving", destination: peers.addressA)) }
        // B mirrors; it cannot be handed a region by a peer it does not follow.
        let response = await peers.b.handle(.migrate(.init(region: "moving", destination: peers.addressA)))
        guard case .error(let message) = response else {
            Issue.record("a replica accepted a migrate request")
            return
        }
        #expect(message.contains("replica"), "\(message)")
    }
}

@Suite("a destination's hand-over hashes")
struct HandOverHashesTests {
    @Test("kept current through stores during and after the first pass: the digest equals a full hash of the final bytes")
    func tableStaysCurrent() async throws {
        let region = try Region(name: "h", backing: .memory, size: 32 << 20, chunkSize: 65536)
        fillPattern(region.bytes, seed: 61)
        let key = ChunkHashKey.random()
        let hashes = HandOverHashes(region: region, key: key)
        #expect(hashes.digest == nil, "a digest before the first pass")
        let filling = Task { await hashes.fill() }
        // Stores racing the pass, each reported as the mirror would.
        for chunk in [0, 100, 511, 3] {
            region.bytes.storeBytes(of: UInt64(chunk) &+ 0xfeed, toByteOffset: chunk * 65536 + 8, as: UInt64.self)
            hashes.applied(chunk)
        }
        await filling.value
        #expect(hashes.digest == (await FrozenRegionDigest.compute(region, key: key)))
        region.bytes.storeBytes(of: 7, toByteOffset: 42 * 65536, as: UInt64.self)
        #expect(hashes.digest != (await FrozenRegionDigest.compute(region, key: key)), "a store not reported went unseen")
        hashes.applied(42)
        #expect(hashes.digest == (await FrozenRegionDigest.compute(region, key: key)))
    }

    @Test("a mirror storing without pause while the first pass runs and ends: the table matches the bytes every time")
    func racingStores() async throws {
        // Many chunks stored during the pass: hashing them again takes a
        // while, and stores during that must not be forgotten either.
        for round in 0..<6 {
            let region = try Region(name: "h", backing: .memory, size: 32 << 20, chunkSize: 65536)
            fillPattern(region.bytes, seed: UInt64(70 + round))
            let key = ChunkHashKey.random()
            let hashes = HandOverHashes(region: region, key: key)
            let stop = Locked(false)
            let exited = Locked(false)
            // The mirror's apply loop: one store and report after another.
            let applier = Thread {
                var n: UInt64 = 0
                while !stop.withLock({ $0 }) {
                    n &+= 1
                    let chunk = Int((n &* 7919) % 512)
                    region.bytes.storeBytes(of: n, toByteOffset: chunk * 65536 + Int(n % 8000) * 8, as: UInt64.self)
                    hashes.applied(chunk)
                }
                exited.withLock { $0 = true }
            }
            applier.start()
            await hashes.fill()
            try await Task.sleep(for: .milliseconds(2))
            stop.withLock { $0 = true }
            // Its last store reported, however late the thread runs.
            try await pollUntil("the applier to stop", seconds: 10) { exited.withLock { $0 } }
            #expect(hashes.digest == (await FrozenRegionDigest.compute(region, key: key)), "round \(round)")
        }
    }
}
