@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Crypto
import Foundation
import Logging
import Testing

private func quietLogger() -> Logger {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}

/// Records what a primary tells its observer.
private final class RecordingObserver: ReplicationObserver {
    struct Log { var sent: [(chunk: Int, version: UInt64)] = []; var acknowledged: UInt64 = 0 }
    let log = Locked(Log())
    func willSend(region: String, chunk: Int, version: UInt64, at: ContinuousClock.Instant) {
        log.withLock { $0.sent.append((chunk, version)) }
    }
    func acknowledged(region: String, peer: String, version: UInt64, at: ContinuousClock.Instant) {
        log.withLock { $0.acknowledged = max($0.acknowledged, version) }
    }
}

@Suite("Eager replication over per-region streams", .serialized)
struct ReplicationTests {
    @Test("the observer hears every chunk sent, versions in order, and the final ACK")
    func observerSeesSendsAndAcks() async throws {
        let primary = try Region(name: "obs", backing: .memory, size: 1 << 20, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 5)
        let observer = RecordingObserver()
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), observer: observer,
                                    logger: quietLogger())
        let rp = try await ReplicationPair(exports: exports)
        let replica = try Region(name: "obs", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitConverged(primary, replica, within: 30)
        primary.bytes[5 * 65536 + 17] ^= 0xff
        try await waitConverged(primary, replica, within: 30)
        let deadline = ContinuousClock.now + .seconds(10)
        while observer.log.withLock({ $0.acknowledged < UInt64($0.sent.count) }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let log = observer.log.withLock { $0 }
        #expect(log.sent.map(\.chunk) == Array(0..<16) + [5])
        #expect(log.sent.map(\.version) == (1...17).map { UInt64($0) })
        #expect(log.acknowledged == 17)
        running.cancel()
        await rp.close()
    }

    @Test("initial sync, then writes into the live primary reach the replica (SHA-256 equal)")
    func syncAndFollow() async throws {
        let primary = try Region(name: "cache", backing: .memory, size: 16 << 20, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 1)
        let exports = RegionExports([.init(region: primary)], logger: quietLogger())
        let rp = try await ReplicationPair(exports: exports)
        let replica = try Region(name: "cache", backing: .memory, size: 16 << 20, chunkSize: 65536)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitConverged(primary, replica, within: 60)
        // The bytes can match before SYNCED (right behind the last chunk)
        // and its self-check have been applied.
        try await pollUntil("SYNCED applied", seconds: 10) { mirror.initialSyncComplete }

        // The primary keeps changing: a few scattered writes.
        for (i, offset) in [17, 65536 * 3 + 5, (16 << 20) - 9].enumerated() {
            primary.bytes[offset] = UInt8(truncatingIfNeeded: 0xa0 + i)
        }
        try await waitConverged(primary, replica, within: 20)
        #expect(mirror.currentProgress.chunksApplied >= 256 + 3)

        // The primary sees its mirror: synced, and caught up once ACKs land.
        let deadline = ContinuousClock.now + .seconds(10)
        while exports.mirrorStates().first?.versionLag != 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let states = exports.mirrorStates()
        #expect(states.count == 1)
        #expect(states.first?.peer == "client")
        #expect(states.first?.synced == true)
        #expect(states.first?.versionLag == 0)
        #expect((states.first?.acknowledgedVersion ?? 0) >= 256 + 3)
        running.cancel()
        await rp.close()
    }

    @Test("a mirror interrupted mid initial sync resumes: less than a full copy is sent, and the copies match")
    func resumeAfterInterruption() async throws {
        let primary = try Region(name: "big", backing: .memory, size: 32 << 20, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 77)
        let exports = RegionExports([.init(region: primary)], logger: quietLogger())
        let path = NSTemporaryDirectory() + "mr-resume-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }

        // First attempt: cut off once a third of the chunks arrived.
        do {
            let rp = try await ReplicationPair(exports: exports)
            let replica = try Region(name: "big", backing: .file(path: path), size: 32 << 20, chunkSize: 65536)
            let mirror = RegionMirror(region: replica)
            let running = Task { try await mirror.run(over: rp.client) }
            let deadline = ContinuousClock.now + .seconds(30)
            while mirror.currentProgress.chunksPresent < 512 / 3 {
                try #require(ContinuousClock.now < deadline, "the first sync made no progress")
                try await Task.sleep(for: .milliseconds(1))
            }
            await rp.pair.client.close()
            _ = await running.result
            #expect(!mirror.initialSyncComplete)
            await rp.close()
        }
        // The replica's file holds part of the region. Resume from it.
        let rp = try await ReplicationPair(exports: exports)
        let replica = try Region(name: "big", backing: .file(path: path), size: nil, chunkSize: 65536)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitConverged(primary, replica, within: 60)
        let deadline = ContinuousClock.now + .seconds(10)
        while !mirror.initialSyncComplete && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(mirror.initialSyncComplete)
        let sent = mirror.currentProgress.chunksApplied
        #expect(sent < 512, "the resume sent \(sent) of 512 chunks")
        #expect(sent > 0)
        running.cancel()
        await rp.close()
    }

    @Test("4 regions written at a steady rate converge once the writing stops")
    func fourRegionsUnderWrites() async throws {
        let names = ["a", "b", "c", "d"]
        let primaries = try names.map { try Region(name: $0, backing: .memory, size: 4 << 20, chunkSize: 16384) }
        for (i, p) in primaries.enumerated() { fillPattern(p.bytes, seed: UInt64(i + 10)) }
        let exports = RegionExports(primaries.map { .init(region: $0) }, logger: quietLogger())
        let rp = try await ReplicationPair(exports: exports)
        let replicas = try names.map { try Region(name: $0, backing: .memory, size: 4 << 20, chunkSize: 16384) }
        let mirrors = replicas.map { RegionMirror(region: $0) }
        let tasks = mirrors.map { m in Task { try await m.run(over: rp.client) } }

        var rng = SystemRandomNumberGenerator()
        let stop = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < stop {
            for p in primaries {
                let offset = Int.random(in: 0..<p.geometry.size, using: &rng)
                p.bytes[offset] = UInt8.random(in: 0...255, using: &rng)
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        for (p, r) in zip(primaries, replicas) { try await waitConverged(p, r, within: 30) }
        tasks.forEach { $0.cancel() }
        await rp.close()
    }

    @Test("a memfd primary gets the userfaultfd tracker, shared by two mirrors that both converge under writes")
    func writeProtectTrackedMirrors() async throws {
        let size = 8 << 20
        let primary = try Region(name: "wp", backing: .memory, size: size, chunkSize: 16384)
        fillPattern(primary.bytes, seed: 21)
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), logger: quietLogger())
        let rp = try await ReplicationPair(exports: exports)
        let replicas = try (0..<2).map { _ in try Region(name: "wp", backing: .memory, size: size, chunkSize: 16384) }
        let tasks = replicas.map { r in Task { try await RegionMirror(region: r).run(over: rp.client) } }

        // Writes from the start: during the initial sync and after it.
        var rng = SystemRandomNumberGenerator()
        let stop = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < stop {
            for _ in 0..<8 {
                let offset = Int.random(in: 0..<size / 8, using: &rng) * 8
                primary.bytes.storeBytes(of: UInt64.random(in: 1...UInt64.max, using: &rng), toByteOffset: offset, as: UInt64.self)
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        let tracking = try #require(exports.dirtyTracking()["wp"])
        #expect(tracking.kind == .writeProtect, "\(tracking.reason)")
        #expect(tracking.subscribers == 2)
        #expect(tracking.statistics.scans > 0)
        for r in replicas { try await waitConverged(primary, r, within: 30) }
        tasks.forEach { $0.cancel() }
        await rp.close()
        // The last mirror gone, the region's tracker is closed.
        let deadline = ContinuousClock.now + .seconds(10)
        while exports.dirtyTracking()["wp"] != nil && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(exports.dirtyTracking().isEmpty)
    }

    private func refusal(_ exports: RegionExports, mirrorOf replica: Region, remoteName: String? = nil) async throws -> ReplicationError? {
        let rp = try await ReplicationPair(exports: exports)
        let outcome: ReplicationError?
        do {
            try await withTimeout(10, "refusal") {
                try await RegionMirror(region: replica, remoteName: remoteName).run(over: rp.client)
            }
            outcome = nil
        } catch let e as ReplicationError {
            outcome = e
        } catch {
            await rp.close()
            throw error
        }
        await rp.close()
        return outcome
    }

    @Test("unknown region and geometry mismatch are refused with their codes")
    func refusals() async throws {
        let primary = try Region(name: "db", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let exports = RegionExports([.init(region: primary)], logger: quietLogger())
        let other = try Region(name: "nope", backing: .memory, size: 1 << 20, chunkSize: 65536)
        guard case .refusedByPeer(let code, _)? = try await refusal(exports, mirrorOf: other) else {
            Issue.record("unknown region was not refused"); return
        }
        #expect(code == ProtocolErrorCode.unknownRegion.rawValue)
        let wrongChunk = try Region(name: "db", backing: .memory, size: 1 << 20, chunkSize: 4096)
        guard case .refusedByPeer(let code2, let message)? = try await refusal(exports, mirrorOf: wrongChunk) else {
            Issue.record("geometry mismatch was not refused"); return
        }
        #expect(code2 == ProtocolErrorCode.geometryMismatch.rawValue)
        #expect(message.contains("65536"))
    }

    @Test("a refused region stream leaves another region on the same connection replicating")
    func refusalIsolated() async throws {
        let good = try Region(name: "good", backing: .memory, size: 2 << 20, chunkSize: 65536)
        let other = try Region(name: "other", backing: .memory, size: 1 << 20, chunkSize: 65536)
        fillPattern(good.bytes, seed: 5)
        let exports = RegionExports([.init(region: good), .init(region: other)], logger: quietLogger())
        let rp = try await ReplicationPair(exports: exports)
        let replica = try Region(name: "good", backing: .memory, size: 2 << 20, chunkSize: 65536)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitConverged(good, replica, within: 20)
        // A second region on the same connection, with the wrong chunk size.
        let wrong = try Region(name: "other", backing: .memory, size: 1 << 20, chunkSize: 4096)
        await #expect(throws: ReplicationError.self) {
            try await withTimeout(10, "refusal") { try await RegionMirror(region: wrong).run(over: rp.client) }
        }
        // The first region keeps following the primary.
        good.bytes[12345] &+= 1
        try await waitConverged(good, replica, within: 20)
        running.cancel()
        await rp.close()
    }

    @Test("a peer not on the region's allow list is refused as if the region did not exist")
    func allowList() async throws {
        let primary = try Region(name: "secret", backing: .memory, size: 65536, chunkSize: 65536)
        let exports = RegionExports([.init(region: primary, allowedPeers: ["someone-else"])], logger: quietLogger())
        let replica = try Region(name: "secret", backing: .memory, size: 65536, chunkSize: 65536)
        guard case .refusedByPeer(let code, _)? = try await refusal(exports, mirrorOf: replica) else {
            Issue.record("not refused"); return
        }
        // Naming the refusal would confirm that the region exists.
        #expect(code == ProtocolErrorCode.unknownRegion.rawValue)
    }

    private func violationCode(_ e: ReplicationError?) -> ProtocolErrorCode? {
        guard case .violation(let v)? = e else { return nil }
        return v.code
    }

    /// A primary that answers SUBSCRIBE with the given frames.
    private func mirrorAgainstScript(_ script: [Frame]) async throws -> ReplicationError? {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try EndpointPair(pki: pki)
        let (client, server) = try await pair.connect()
        let liar = Task {
            guard let stream = try? await server.acceptStream() else { return }
            let frames = FrameStream(stream)
            _ = try? await frames.receive()
            for f in script { try? await frames.send(f) }
            _ = try? await frames.receive()
        }
        let replica = try Region(name: "r", backing: .memory, size: 2 * 4096, chunkSize: 4096)
        defer { liar.cancel() }
        do {
            try await withTimeout(10, "mirror") { try await RegionMirror(region: replica).run(over: client) }
            await pair.close()
            return nil
        } catch let e as ReplicationError {
            await pair.close()
            return e
        }
    }

    @Test("a chunk index out of range, a version going backwards and a short chunk end the stream with their codes")
    func badPrimary() async throws {
        let page = [UInt8](repeating: 1, count: 4096)
        let outOfRange = try await mirrorAgainstScript([.write(chunk: 2, version: 1, bytes: page)])
        #expect(violationCode(outOfRange) == .chunkOutOfRange)
        let backwards = try await mirrorAgainstScript([.write(chunk: 0, version: 5, bytes: page),
                                                       .write(chunk: 0, version: 4, bytes: page)])
        #expect(violationCode(backwards) == .versionWentBackwards)
        let short = try await mirrorAgainstScript([.write(chunk: 1, version: 1, bytes: [1, 2, 3])])
        #expect(violationCode(short) == .malformedFrame)
    }
}
