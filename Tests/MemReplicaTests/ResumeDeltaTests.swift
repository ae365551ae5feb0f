@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaSystem
import Foundation
import Logging
import Testing

/// Counts the chunks a primary sends, per chunk, from a point on.
private final class SendCounter: ReplicationObserver {
    private let counts = Locked([Int: Int]())
    private let pulled = Locked([Int]())

    func willSend(region: String, chunk: Int, version: UInt64, at: ContinuousClock.Instant) {
        counts.withLock { $0[chunk, default: 0] += 1 }
    }

    func acknowledged(region: String, peer: String, version: UInt64, at: ContinuousClock.Instant) {}

    func servedRead(region: String, peer: String, chunks: Int, bytes: Int, duration: Duration) {
        pulled.withLock { $0.append(chunks) }
    }

    /// Sends per chunk since the last reset.
    var sent: [Int: Int] { counts.withLock { $0 } }
    /// Chunks answered to READs since the last reset.
    var chunksRead: Int { pulled.withLock { $0.reduce(0, +) } }

    func reset() {
        counts.withLock { $0 = [:] }
        pulled.withLock { $0 = [] }
    }
}

private func quiet() -> Logger {
    var l = Logger(label: "resume-test")
    l.logLevel = .critical
    return l
}

private func waitFor(_ what: String, seconds: Double = 30, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
        try await Task.sleep(for: .milliseconds(2))
    }
}

/// Chunks whose bytes differ between two regions of one geometry.
private func differingChunks(_ a: Region, _ b: Region) throws -> Set<Int> {
    Set(try (0..<a.geometry.chunkCount).filter { try a.copyChunk($0) != b.copyChunk($0) })
}

@Suite("Resume after the primary changed while the mirror was away", .serialized)
struct ResumeDeltaTests {
    static let chunkSize = 65536, chunkCount = 512

    @Test("an eager mirror cut mid-sync, while the primary rewrites chunks it holds and chunks it lacks, gets exactly those again",
          arguments: TransportKind.allCases)
    func eagerResumeSendsExactlyTheDifference(_ kind: TransportKind) async throws {
        let size = Self.chunkSize * Self.chunkCount
        let primary = try Region(name: "delta", backing: .memory, size: size, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 61)
        let counter = SendCounter()
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), observer: counter, logger: quiet())
        let path = NSTemporaryDirectory() + "mr-delta-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }

        // First connection: cut once about a third has arrived.
        let first = try await TransportReplicationPair(kind, exports: exports)
        let replica = try Region(name: "delta", backing: .file(path: path), size: size, chunkSize: Self.chunkSize)
        let firstMirror = RegionMirror(region: replica, offersHeldChunks: false)
        let firstRun = Task { try await firstMirror.run(over: first.client) }
        try await waitFor("a third of the chunks") { firstMirror.currentProgress.chunksPresent >= Self.chunkCount / 3 }
        await first.close()
        _ = await firstRun.result
        #expect(exports.mirrorStates().isEmpty, "the primary let the mirror go")

        // While apart the primary rewrites chunks the replica holds and
        // chunks it lacks (the latter change nothing: they are sent anyway).
        let held = Set(0..<Self.chunkCount).subtracting(try differingChunks(primary, replica))
        let lacking = Set(0..<Self.chunkCount).subtracting(held)
        try #require(held.count >= 8 && lacking.count >= 8, "held \(held.count), lacking \(lacking.count)")
        let rewrittenHeld = Array(held.sorted().prefix(5)) + [held.sorted().last!]
        let rewrittenLacking = Array(lacking.sorted().suffix(3))
        for chunk in rewrittenHeld + rewrittenLacking {
            primary.bytes.storeBytes(of: UInt64(0xC4A7_0000) | UInt64(chunk), toByteOffset: chunk * Self.chunkSize + 24, as: UInt64.self)
        }
        let expected = try differingChunks(primary, replica)
        #expect(expected == lacking.union(rewrittenHeld), "what the resume must send")

        // Second connection, resuming from the file: exactly those chunks, once each.
        counter.reset()
        let second = try await TransportReplicationPair(kind, exports: exports)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: second.client) }
        try await waitConverged(primary, replica, within: 60)
        try await waitFor("SYNCED") { mirror.initialSyncComplete }
        let sent = counter.sent
        #expect(Set(sent.keys) == expected, "sent \(sent.count) chunks, expected \(expected.count)")
        #expect(sent.values.allSatisfy { $0 == 1 }, "a chunk sent twice: \(sent.filter { $0.value > 1 })")
        #expect(mirror.currentProgress.chunksApplied == expected.count)
        running.cancel()
        await second.close()
        _ = await running.result
    }

    @Test("a lazy mirror cut mid-pull, while the primary rewrites chunks it holds, drops exactly those and pulls them and the rest",
          arguments: TransportKind.allCases)
    func lazyResumeRefetchesTheDifference(_ kind: TransportKind) async throws {
        let size = Self.chunkSize * Self.chunkCount
        let primary = try Region(name: "lazy-delta", backing: .memory, size: size, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 62)
        let counter = SendCounter()
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), observer: counter, logger: quiet())
        let replica = try Region(name: "lazy-delta", backing: .memory, size: size, chunkSize: Self.chunkSize)
        var options = PostCopyMirror.Options()
        // Small pull batches, so the cut finds the pull part way through.
        options.pullWindowBytes = 4 * Self.chunkSize
        options.pullBatchBytes = Self.chunkSize
        let mirror = try PostCopyMirror(region: replica, options: options)

        let first = try await TransportReplicationPair(kind, exports: exports)
        let firstRun = Task { try await mirror.run(over: first.client) }
        try await waitFor("a third of the chunks") { mirror.progress.chunksPresent >= Self.chunkCount / 3 }
        await first.close()
        _ = await firstRun.result
        // Cut off, it holds bytes the primary may change: not current.
        #expect(!mirror.progress.subscribed, "a lazy mirror whose connection ended still says it is subscribed")
        let held = Set((0..<Self.chunkCount).filter { mirror.isChunkPresent($0) })
        try #require(held.count < Self.chunkCount - 8, "the pull finished before the cut")

        let rewrittenHeld = Array(held.sorted().prefix(4))
        for chunk in rewrittenHeld {
            primary.bytes.storeBytes(of: UInt64(0x1A2E_0000) | UInt64(chunk), toByteOffset: chunk * Self.chunkSize + 8, as: UInt64.self)
        }
        let invalidatedBefore = mirror.progress.chunksInvalidated
        counter.reset()
        let second = try await TransportReplicationPair(kind, exports: exports)
        let running = Task { try await mirror.run(over: second.client) }
        // Chunks held from before are trusted only once SYNCED says the
        // primary named those that changed.
        try await waitFor("SYNCED and the pull to finish", seconds: 60) { mirror.progress.subscribed && mirror.progress.complete }
        #expect(regionSHA(replica) == regionSHA(primary))
        #expect(mirror.progress.chunksInvalidated - invalidatedBefore == rewrittenHeld.count, "only the rewritten held chunks are dropped")
        // The missing chunks and the rewritten ones cross once each.
        let needed = Self.chunkCount - held.count + rewrittenHeld.count
        #expect(counter.chunksRead == needed, "\(counter.chunksRead) chunks read for \(needed) needed")
        running.cancel()
        await second.close()
        _ = await running.result
        mirror.stop()
    }
}
