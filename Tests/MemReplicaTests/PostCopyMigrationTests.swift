@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing

@Suite("live migration: post-copy and hybrid hand-overs", .serialized)
struct PostCopyMigrationTests {
    /// A freeze around `writer` that records the source's bytes once it has
    /// stopped; after the hand-over the writer stops for good (the region
    /// is exported at its new owner only once filled).
    /// `lastStore`: one more store once the writer has paused and before
    /// the freeze ends, so that at least one chunk changed since the last
    /// scan however the writer thread was scheduled.
    private static func recording(_ writer: InProcessWriter, _ region: Region, lastStore: Bool = false,
                                  afterCommit: @escaping @Sendable () -> Void = {}) -> (MigrationFreeze, Locked<String?>) {
        let frozen = Locked<String?>(nil)
        let inner = writer.freeze(next: { nil })
        return (MigrationFreeze(pause: {
            await inner.pause()
            if lastStore {
                region.bytes.storeBytes(of: UInt64.random(in: 1...UInt64.max), toByteOffset: region.geometry.size / 2, as: UInt64.self)
            }
            frozen.withLock { $0 = sha(region) }
        }, resume: { handedOver in
            if handedOver { afterCommit() }
            await inner.resume(handedOver)
        }), frozen)
    }

    @Test("post-copy hands over at once: the destination's eager copy keeps what is current, pulls the chunks named stale, ends equal to the frozen source, and the source lets go only then")
    func postcopyFromEagerMirror() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        try await Task.sleep(for: .milliseconds(200))
        let (freeze, frozen) = Self.recording(writer, regionA, lastStore: true)
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, mode: .postcopy,
                                                     timeoutSeconds: 30), freeze: freeze)
        #expect(report.handedOver, "\(report.reason ?? "")")
        #expect(report.handedOverAs == .postcopy)
        #expect(report.generation == 2)
        let pulled = try #require(report.chunksPulled)
        #expect(pulled > 0 && pulled < regionA.geometry.chunkCount, "\(pulled): only what the writer changed since the mark")
        #expect(report.fillSeconds != nil, "the destination confirmed it holds every chunk")
        #expect(report.bytesSent >= UInt64(pulled * regionA.geometry.chunkSize), "pulled chunks count as sent")
        let atB = try #require(peers.b.exports.export(named: "moving"))
        #expect(atB.identity.generation == 2)
        #expect(sha(atB.region) == frozen.withLock { $0 }, "the new owner's bytes are not the source's frozen state")
        #expect(peers.a.exports.export(named: "moving") == nil, "the source let go after the fill")
        #expect(peers.a.exports.moved("moving")?.identity.generation == 2)
        #expect(try peers.b.identities!.takenOver(region: "moving", path: peers.pathB)?.filling == nil)
        // The old primary mirrors its new owner (--then mirror) and converges.
        try await pollUntil("A to mirror B", seconds: 20) {
            guard let runner = peers.a.mirrors.first, runner.synced, case .eager(let m)? = runner.mirror else { return false }
            return sha(m.region) == sha(atB.region)
        }
    }

    @Test("post-copy into a peer that holds nothing (--accept-migrations on tmpfs): every chunk is pulled; stores made at the new owner during the fill are kept, never overwritten by a later pull")
    func postcopyFromNothingWritableAtOnce() async throws {
        let accepted = "/dev/shm/mr-accepted-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: accepted) }
        let peers = try await MigrationPeers.start(mirrored: false, accepted: accepted)
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let chunkSize = regionA.geometry.chunkSize, chunks = regionA.geometry.chunkCount
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        try await Task.sleep(for: .milliseconds(100))
        // Right at the commit, before any pull: store a marker into every
        // other chunk of B's copy, through B's own mapping (each first
        // touch faults its chunk in from A).
        let stored = Locked<[Int: UInt64]>([:])
        let storing = Locked<Thread?>(nil)
        let (freeze, frozen) = Self.recording(writer, regionA, afterCommit: {
            guard let taken = peers.b.takeOvers.withLock({ $0["moving"] }) else { return }
            let region = taken.mirror.region
            let thread = Thread {
                for chunk in stride(from: 0, to: chunks, by: 2) {
                    let value = UInt64(chunk) | 0xfeed_0000_0000
                    region.bytes.storeBytes(of: value, toByteOffset: chunk * chunkSize + 8, as: UInt64.self)
                    stored.withLock { $0[chunk] = value }
                }
            }
            storing.withLock { $0 = thread }
            thread.start()
        })
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, mode: .postcopy,
                                                     timeoutSeconds: 30), freeze: freeze)
        #expect(report.handedOver, "\(report.reason ?? "")")
        #expect(report.chunksPulled == chunks)
        #expect(report.fillSeconds != nil)
        #expect(storing.withLock { $0 } != nil, "B took the region over before the source resumed its writers")
        try await pollUntil("the stores at B", seconds: 10) { stored.withLock { $0.count } == (chunks + 1) / 2 }
        let atB = try #require(peers.b.exports.export(named: "moving"))
        #expect(atB.region.backing.description.hasPrefix(accepted))
        // B = A's frozen bytes with the markers in.
        let expected = try Region(name: "expected", backing: .memory, size: regionA.geometry.size, chunkSize: chunkSize)
        expected.bytes.copyMemory(from: UnsafeRawBufferPointer(regionA.bytes))
        #expect(sha(expected) == frozen.withLock { $0 }, "A changed after its freeze")
        for (chunk, value) in stored.withLock({ $0 }) {
            expected.bytes.storeBytes(of: value, toByteOffset: chunk * chunkSize + 8, as: UInt64.self)
        }
        #expect(sha(atB.region) == sha(expected), "a store at the new owner was lost, or a chunk is not the frozen source's")
    }

    @Test("hybrid: pre-copy rounds that cannot meet the budget switch to post-copy, and the copy ends exact")
    func hybridSwitches() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        let (freeze, frozen) = Self.recording(writer, regionA)
        // A budget no pre-copy round can meet: one microsecond.
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, mode: .hybrid,
                                                     maxDowntimeMilliseconds: 0.001, timeoutSeconds: 30), freeze: freeze)
        #expect(report.handedOver, "\(report.reason ?? "")")
        #expect(report.mode == .hybrid)
        #expect(report.handedOverAs == .postcopy)
        #expect((report.roundsSeconds ?? 0) >= PostCopyMigrationTests.patience, "switched after the rounds stalled, not at once")
        #expect(report.fillSeconds != nil)
        let atB = try #require(peers.b.exports.export(named: "moving"))
        #expect(sha(atB.region) == frozen.withLock { $0 })
    }

    static let patience = 0.9

    @Test("one region migrates (pre-copy, then back by post-copy) while another keeps replicating between the same two peers")
    func othersKeepReplicating() async throws {
        let staying = "/dev/shm/mr-staying-\(UUID().uuidString.prefix(8))"
        defer { unlink(staying) }
        let peers = try await MigrationPeers.start(alongside: staying)
        defer { peers.stopSoon() }
        let other = try #require(peers.a.exports.export(named: "staying")).region
        let otherWriter = InProcessWriter(other)
        defer { otherWriter.stop() }
        let there = try #require(peers.b.mirrors.first { $0.spec.name == "staying" })
        let away = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 30))
        #expect(away.handedOver, "\(away.reason ?? "")")
        try await pollUntil("A to mirror 'moving' back", seconds: 20) { peers.a.mirrors.first?.synced == true }
        let back = try await peers.b.migrate(.init(region: "moving", destination: peers.addressA, mode: .postcopy, timeoutSeconds: 30))
        #expect(back.handedOver && back.handedOverAs == .postcopy, "\(back.reason ?? "")")
        #expect(peers.a.exports.export(named: "moving")?.identity.generation == 3)
        // The other region never stopped: its writer stores on, its mirror follows.
        #expect(there.synced)
        #expect(peers.a.exports.export(named: "staying")?.identity.generation == 1)
        otherWriter.stop()
        try await Task.sleep(for: .milliseconds(50))
        guard case .eager(let m)? = there.mirror else {
            Issue.record("the second region's mirror is not running")
            return
        }
        try await pollUntil("the second region's mirror to converge", seconds: 10) { sha(m.region) == sha(other) }
    }

    @Test("post-copy needs the destination's copy on tmpfs: refused before anything is frozen, the source keeps the region and the mirror goes on")
    func postcopyNeedsTmpfs() async throws {
        let folder = NSTemporaryDirectory() + "mr-disk-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let peers = try await MigrationPeers.start(mirrorFolder: folder)
        defer { peers.stopSoon() }
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, mode: .postcopy,
                                                     timeoutSeconds: 10))
        #expect(!report.handedOver)
        #expect(report.reason?.contains("tmpfs") == true, "\(report.reason ?? "")")
        #expect(report.downtimeMilliseconds == nil, "nothing was frozen")
        #expect(peers.a.exports.export(named: "moving")?.identity.generation == 1)
        #expect(peers.b.mirrors.first?.synced == true)
    }
}

@Suite("live migration: --when quiet", .serialized)
struct QuietMigrationTests {
    @Test("--when quiet finds a cyclic writer's period in the peer's dirty-rate history and freezes inside its quiet phase")
    func freezesWhenQuiet() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        // Bursts of 0.3 s every second; four seconds of history first.
        let writer = InProcessWriter(regionA, cycle: (period: 1, burst: 0.3))
        defer { writer.stop() }
        try await Task.sleep(for: .seconds(4))
        let frozeBursting = Locked<Bool?>(nil)
        let inner = writer.freeze(next: { nil })
        let freeze = MigrationFreeze(pause: {
            frozeBursting.withLock { $0 = writer.bursting() }
            await inner.pause()
        }, resume: { await inner.resume($0) })
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 30,
                                                     when: .quiet), freeze: freeze)
        #expect(report.handedOver, "\(report.reason ?? "")")
        let cycle = try #require(report.cycleSeconds, "no cycle found")
        #expect(abs(cycle - 1) <= 0.11, "period \(cycle) s")
        #expect((report.waitedSeconds ?? 99) < 1.2, "waited at most about one period")
        #expect(frozeBursting.withLock { $0 } == false, "the freeze fell inside a burst")
    }

    @Test("--when quiet with a steady writer finds no cycle and migrates without waiting for one")
    func noCycleMigratesNow() async throws {
        let peers = try await MigrationPeers.start()
        defer { peers.stopSoon() }
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        let writer = InProcessWriter(regionA)
        defer { writer.stop() }
        try await Task.sleep(for: .seconds(4))
        let report = try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, timeoutSeconds: 10,
                                                     when: .quiet), freeze: writer.freeze(next: { nil }))
        #expect(report.handedOver, "\(report.reason ?? "")")
        #expect(report.cycleSeconds == nil)
        // No cycle in 4 s of history: it watches up to half the timeout.
        #expect((report.waitedSeconds ?? 0) <= 5.5)
    }
}

@Suite("live migration: the post-copy hazard", .serialized)
struct PostCopyHazardTests {
    @Test("the source lost before the new owner holds every chunk: the region is not exported, status names the missing chunks, and a reader of one gets an error, never zeros")
    func sourceLostDuringFill() async throws {
        let accepted = "/dev/shm/mr-accepted-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: accepted) }
        var options = PostCopyMirror.Options()
        options.backgroundPull = false      // only faults pull: the fill cannot end by itself
        options.faultWaitLimit = .seconds(1)
        let peers = try await MigrationPeers.start(mirrored: false, accepted: accepted, postCopy: options)
        defer { peers.stopSoon() }
        let socket = peers.root + "/b.sock"
        let server = try ControlServer(path: socket, logger: silentLogger(), attachHandler: { request, process in
            peers.b.attach(request, from: process)
        }) { _ in .error("not served here") }
        defer { Task { await server.stop() } }
        let migrating = Task {
            try await peers.a.migrate(.init(region: "moving", destination: peers.addressB, mode: .postcopy, timeoutSeconds: 30))
        }
        try await pollUntil("B to take the region over", seconds: 10) { peers.b.postCopyTakeOver(named: "moving") != nil }
        let taken = try #require(peers.b.postCopyTakeOver(named: "moving"))
        // Writers attach once the fill ends; readers at once.
        #expect(throws: (any Error).self) {
            _ = try AttachedRegion(controlPath: socket, region: "moving", role: "primary", writable: true)
        }
        let reader = try AttachedRegion(controlPath: socket, region: "moving")
        #expect(reader.answer.lazy)
        // A chunk pulled while the source is up reads its bytes.
        let regionA = try #require(peers.a.exports.export(named: "moving")).region
        #expect(try reader.read(offset: 3 * 65536, count: 16) == Array(UnsafeRawBufferPointer(rebasing: regionA.bytes[(3 * 65536)..<(3 * 65536 + 16)])))
        // The source goes away for good.
        await peers.a.endpoint.close()
        let report = try await migrating.value
        #expect(report.handedOver && report.handedOverAs == .postcopy)
        #expect(report.fillSeconds == nil, "the fill cannot have been confirmed")
        let result = Locked<Result<[UInt8], any Error>?>(nil)
        Thread {
            let read = Result { try reader.read(offset: 9 * 65536 + 40, count: 8) }
            result.withLock { $0 = read }
        }.start()
        try await pollUntil("the reader's answer", seconds: 15) { result.withLock { $0 } != nil }
        guard case .failure(let error)? = result.withLock({ $0 }) else {
            Issue.record("a missing chunk was read while its only holder was gone: \(String(describing: result.withLock { $0 }))")
            return
        }
        #expect("\(error)".contains("out of reach"), "\(error)")
        #expect(peers.b.exports.export(named: "moving") == nil, "an incomplete copy must not be exported")
        #expect(taken.progress.chunksPresent < taken.progress.chunkCount)
        let status = await peers.b.statusReport()
        let region = try #require(status.regions.first { $0.name == "moving" })
        #expect(region.problem?.contains("chunks still at the source") == true, "\(region.problem ?? "no problem shown")")
        #expect(try peers.b.identities!.takenOver(region: "moving", path: accepted + "/moving.region")?.filling != nil,
                "a restart must find the fill unfinished")
        reader.detach()
    }
}
