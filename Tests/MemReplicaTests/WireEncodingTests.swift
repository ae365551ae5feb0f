@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaSystem
import Foundation
import Testing

/// PAGES frames end to end: zero chunks, page deltas, redundant writes and
/// compression, each checked by the replica's SHA-256 against the
/// primary's and by the wire bytes the primary counted.
@Suite("Wire encoding: zero chunks, page deltas, redundant writes, compression", .serialized)
struct WireEncodingTests {
    static let chunkSize = 65536

    private func waitSavings(_ exports: RegionExports, _ name: String, _ what: String,
                             _ condition: (WireSavings) -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while !condition(exports.wireSavings()[name] ?? WireSavings()) {
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: 20) }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// A synced primary and replica; `body` then changes the primary.
    private func withSyncedPair(_ name: String, size: Int, fill: (UnsafeMutableRawBufferPointer) -> Void,
                                offered: WireCapabilities = .all, codecs: [PageCodec] = [.zstd, .lz4],
                                _ body: (Region, Region, RegionExports) async throws -> Void) async throws {
        let primary = try Region(name: name, backing: .memory, size: size, chunkSize: Self.chunkSize)
        fill(primary.bytes)
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), codecPreference: codecs,
                                    logger: testLogger)
        let pair = try await TransportReplicationPair(.quic, exports: exports, offered: offered)
        let replica = try Region(name: name, backing: .memory, size: size, chunkSize: Self.chunkSize)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let running = Task { try await mirror.run(over: pair.client) }
        defer { running.cancel() }
        // A fresh replica equals an all-zero primary before anything arrived.
        try await waitSynced(mirror, within: 30)
        try await waitConverged(primary, replica, within: 30)
        try await body(primary, replica, exports)
        running.cancel()
        await pair.close()
    }

    @Test("an all-zero region travels as zero chunks: a few bytes per 64 KiB chunk, and the replica equals it")
    func zeroRegion() async throws {
        let size = 32 << 20
        try await withSyncedPair("zeros", size: size, fill: { _ in }) { primary, replica, exports in
            let s = try #require(exports.wireSavings()["zeros"])
            #expect(s.zeroChunks == UInt64(size / Self.chunkSize))
            #expect(s.wireBytes < UInt64(size / Self.chunkSize * 64), "\(s.wireBytes) wire bytes for \(size) zero bytes")
            #expect(regionSHA(primary) == regionSHA(replica))
        }
    }

    @Test("one 4 KiB page written in each of 200 chunks costs about one page per chunk on the wire, not 64 KiB")
    func pageDeltas() async throws {
        let size = 16 << 20
        // Incompressible: the saving measured is the delta's alone.
        try await withSyncedPair("delta", size: size, fill: { fillPattern($0, seed: 7) }) { primary, replica, exports in
            let before = exports.wireSavings()["delta"] ?? WireSavings()
            var random = SystemRandomNumberGenerator()
            let chunks = Array((0..<(size / Self.chunkSize)).shuffled(using: &random).prefix(200))
            for chunk in chunks {
                let page = Int.random(in: 0..<(Self.chunkSize / 4096), using: &random)
                let start = chunk * Self.chunkSize + page * 4096
                fillPattern(UnsafeMutableRawBufferPointer(rebasing: primary.bytes[start..<start + 4096]), seed: UInt64(chunk))
            }
            try await waitConverged(primary, replica, within: 30)
            try await waitSavings(exports, "delta", "200 delta chunks") { $0.deltaChunks - before.deltaChunks >= 200 }
            let after = try #require(exports.wireSavings()["delta"])
            let wire = after.wireBytes - before.wireBytes
            let today = UInt64(200 * (Self.chunkSize + 8))
            #expect(wire <= today / 10, "\(wire) wire bytes for 200 page writes; whole chunks would be \(today)")
            #expect(wire >= 200 * 4096, "each changed page must travel")
        }
    }

    @Test("a chunk rewritten with the bytes it had is not sent again (redundant write)")
    func redundantWrites() async throws {
        try await withSyncedPair("same", size: 4 << 20, fill: { fillPattern($0, seed: 3) }) { primary, replica, exports in
            let before = exports.wireSavings()["same"] ?? WireSavings()
            let sentBefore = exports.mirrorStates().first?.sentVersion ?? 0
            // Stores that change nothing: the write-protect tracker still sees them.
            for chunk in 0..<8 {
                let range = chunk * Self.chunkSize..<(chunk + 1) * Self.chunkSize
                let copy = Array(primary.bytes[range])
                UnsafeMutableRawBufferPointer(rebasing: primary.bytes[range]).copyBytes(from: copy)
            }
            try await waitSavings(exports, "same", "the rewrites found") { $0.chunksChanged - before.chunksChanged >= 8 }
            let after = try #require(exports.wireSavings()["same"])
            #expect(after.redundantChunks - before.redundantChunks == after.chunksChanged - before.chunksChanged)
            #expect(after.wireBytes == before.wireBytes)
            #expect(exports.mirrorStates().first?.sentVersion == sentBefore, "no frame, no version")
            #expect(regionSHA(primary) == regionSHA(replica))
        }
    }

    @Test("compressible chunks travel compressed with the codec both sides take, and arrive exact", arguments: [PageCodec.zstd, .lz4])
    func compression(_ codec: PageCodec) async throws {
        // Text-like content: words from a small vocabulary.
        let fill: (UnsafeMutableRawBufferPointer) -> Void = { memory in
            let words = ["replica ", "primary ", "chunk ", "page ", "region ", "migration ", "latency ", "wire "]
            var state: UInt64 = 0x9e37_79b9_7f4a_7c15
            var offset = 0
            while offset < memory.count {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                for byte in words[Int(state >> 61)].utf8 where offset < memory.count {
                    memory[offset] = byte
                    offset += 1
                }
            }
        }
        let offered: WireCapabilities = codec == .zstd ? [.pages, .zstd] : [.pages, .lz4]
        try await withSyncedPair("text", size: 8 << 20, fill: fill, offered: offered, codecs: [codec]) { primary, replica, exports in
            let s = try #require(exports.wireSavings()["text"])
            #expect(s.compressionInputBytes > 0, "the first window compresses (the link is assumed slow until measured)")
            #expect(s.compressionRatio < 0.6, "ratio \(s.compressionRatio)")
            #expect(regionSHA(primary) == regionSHA(replica))
        }
    }

    @Test("a mirror that offers nothing gets plain WRITEs and converges")
    func noCapabilities() async throws {
        try await withSyncedPair("plain", size: 4 << 20, fill: { _ in }, offered: []) { primary, replica, exports in
            let s = try #require(exports.wireSavings()["plain"])
            #expect(s.zeroChunks == 0 && s.deltaChunks == 0 && s.compressionInputBytes == 0)
            #expect(s.wireBytes >= UInt64(4 << 20))
            #expect(regionSHA(primary) == regionSHA(replica))
        }
    }

    @Test("a replica whose chunk changed under it refuses a page delta, stores none of it, and converges after resubscribing")
    func checkFailureResyncs() async throws {
        let size = 2 << 20
        let primary = try Region(name: "drift", backing: .memory, size: size, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 11)
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), logger: testLogger)
        let pair = try await TransportReplicationPair(.quic, exports: exports)
        let path = NSTemporaryDirectory() + "mr-drift-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }
        let replica = try Region(name: "drift", backing: .file(path: path), size: size, chunkSize: Self.chunkSize)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let running = Task { try await mirror.run(over: pair.client) }
        try await waitConverged(primary, replica, within: 30)
        // SYNCED's self-check must be behind us: it would catch the drift first.
        try await waitSynced(mirror, within: 30)
        // Page 3 of chunk 5 drifts on the replica; then the primary changes page 9.
        replica.bytes[5 * Self.chunkSize + 3 * 4096] ^= 0x5a
        let drifted = Array(replica.bytes[5 * Self.chunkSize..<6 * Self.chunkSize])
        primary.bytes[5 * Self.chunkSize + 9 * 4096 + 1] ^= 0xff
        let result = await running.result
        guard case .failure(let error) = result, case .pageCheckFailed(region: "drift", chunk: 5)? = error as? ReplicationError else {
            Issue.record("expected a PAGES check failure, got \(result)")
            return
        }
        #expect(Array(replica.bytes[5 * Self.chunkSize..<6 * Self.chunkSize]) == drifted, "nothing of the refused frame was stored")
        // Resubscribing offers the hashes of what it holds: the resume fixes the chunk.
        let again = RegionMirror(region: replica, offersHeldChunks: true)
        let rerun = Task { try await again.run(over: pair.client) }
        try await waitConverged(primary, replica, within: 30)
        rerun.cancel()
        await pair.close()
    }

    @Test("PAGES frames round-trip, and masks that overlap or run past the pages are refused")
    func framesRoundTripAndRefuse() throws {
        let frame = Frame.pages(.init(chunk: 7, version: 9, pageCount: 12, present: [0b0000_0101, 0], zero: [0b1000_0000, 0b0000_1000],
                                      codec: .lz4, check: ChunkHash(high: 1, low: 2), payload: [1, 2, 3]))
        var decoder = FrameDecoder()
        decoder.append(try frame.encoded())
        #expect(try decoder.next() == frame)

        func refused(present: [UInt8], zero: [UInt8], pages: Int = 12, codec: UInt64 = 0) throws -> Bool {
            var fields: [UInt8] = []
            VarInt.encode(1, into: &fields); VarInt.encode(1, into: &fields); VarInt.encode(UInt64(pages), into: &fields)
            fields += present + zero
            VarInt.encode(codec, into: &fields); VarInt.encode(0, into: &fields)
            var bytes: [UInt8] = [0x14]
            VarInt.encode(UInt64(fields.count), into: &bytes)
            var d = FrameDecoder()
            d.append(bytes + fields)
            do { _ = try d.next(); return false } catch { return true }
        }
        #expect(try refused(present: [1, 0], zero: [1, 0]), "a page both present and zero")
        #expect(try refused(present: [0, 0b0001_0000], zero: [0, 0]), "page 12 of a 12-page chunk")
        #expect(try refused(present: [1, 0], zero: [0, 0], codec: 3), "an unknown codec")
        #expect(try !refused(present: [1, 0b0000_1000], zero: [2, 0]))
    }
}
