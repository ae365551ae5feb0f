@testable import MemReplica
@testable import MemReplicaBench
import Crypto
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A sparse primary (a memfd with data in a few chunks) is replicated
/// without allocating its holes: a shared mapping's read of a hole
/// allocates a page, which for a 16 GiB region filled the host's memory.
@Suite("Sparse regions: holes cross as zeros without being allocated", .serialized)
struct SparseRegionTests {
    static let size = 64 << 20, chunk = 65536
    static let dataChunks = [3, 100, 700, 1023]

    /// Bytes the backing has allocated (st_blocks).
    static func allocated(_ region: Region) -> Int {
        var st = stat()
        guard fstat(region.backingDescriptor, &st) == 0 else { return -1 }
        return Int(st.st_blocks) * 512
    }

    /// A memfd region with data in `dataChunks` only, and the SHA-256 of
    /// its whole content, computed without reading its holes.
    static func sparsePrimary(_ name: String) throws -> (Region, String) {
        let primary = try Region(name: name, backing: .memory, size: size, chunkSize: chunk)
        var expected = [UInt8](repeating: 0, count: size)
        for (i, c) in dataChunks.enumerated() {
            let bytes = patternBytes(count: chunk, seed: UInt64(80 + i))
            UnsafeMutableRawBufferPointer(rebasing: primary.bytes[c * chunk..<(c + 1) * chunk]).copyBytes(from: bytes)
            expected.replaceSubrange(c * chunk..<(c + 1) * chunk, with: bytes)
        }
        return (primary, SHA256.hash(data: expected).map { String(format: "%02x", $0) }.joined())
    }

    @Test("the hole cursor tells holes from data in a memfd, and reads holes as zeros")
    func cursor() throws {
        let (primary, _) = try Self.sparsePrimary("cursor")
        var holes = HoleCursor(primary)
        let found = (0..<Self.size / Self.chunk).filter { !holes.isHole(primary.geometry.byteRange(ofChunk: $0)!) }
        #expect(found == Self.dataChunks)
        var again = HoleCursor(primary)
        #expect(try again.chunkBytes(4, of: primary).allSatisfy { $0 == 0 })
        #expect(Array(try again.chunkBytes(100, of: primary)) == Array(try primary.chunkBytes(100)))
        #expect(Self.allocated(primary) == Self.dataChunks.count * Self.chunk)
    }

    @Test("an eager sync, a lazy pull and a verify of a sparse primary leave its holes unallocated, and the copies are exact")
    func replicatesWithoutAllocating() async throws {
        let (primary, expected) = try Self.sparsePrimary("sparse")
        let data = Self.dataChunks.count * Self.chunk
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), logger: silentLogger())
        let rp = try await ReplicationPair(exports: exports)

        let eager = try Region(name: "sparse", backing: .memory, size: Self.size, chunkSize: Self.chunk)
        let mirror = RegionMirror(region: eager)
        let running = Task { try await mirror.run(over: rp.client) }
        try await pollUntil("the eager sync", seconds: 30) { mirror.currentProgress.synced }
        #expect(regionSHA(eager) == expected)

        let lazy = try Region(name: "sparse", backing: .memory, size: Self.size, chunkSize: Self.chunk)
        let post = try PostCopyMirror(region: lazy)
        let pulling = Task { try await post.run(over: rp.client) }
        try await pollUntil("the lazy pull", seconds: 30) { post.progress.subscribed && post.progress.complete }
        #expect(regionSHA(lazy) == expected)

        let report = try await ReplicaVerifier(region: eager, remoteName: "sparse", source: "test", held: nil).run(over: rp.client)
        #expect(report.equal && report.compared == Self.size / Self.chunk)
        // Only the data chunks are backed (and a page or so of slack).
        #expect(Self.allocated(primary) <= data + 65536, "the primary's memfd holds \(Self.allocated(primary)) bytes for \(data) of data")

        running.cancel()
        pulling.cancel()
        await rp.close()
        _ = await running.result
        _ = await pulling.result
        post.stop()
    }

    @Test("a new replica of zero chunks allocates nothing for them, and its prefault skips what the data jumps over")
    func newReplicaAllocatesOnlyData() async throws {
        // All zeros, but written (the primary sends zero chunks, not holes),
        // and one chunk of data at the end of a region larger than the
        // prefault's lookahead.
        let size = ReplicaPrefault.lookahead * 2, last = size / Self.chunk - 1
        let primary = try Region(name: "zeros", backing: .memory, size: size, chunkSize: Self.chunk)
        primary.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        let tail = patternBytes(count: Self.chunk, seed: 91)
        UnsafeMutableRawBufferPointer(rebasing: primary.bytes[(last * Self.chunk)..<size]).copyBytes(from: tail)
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), logger: silentLogger())
        let rp = try await ReplicationPair(exports: exports)

        let replica = try Region(name: "zeros", backing: .memory, size: size, chunkSize: Self.chunk)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let running = Task { try await mirror.run(over: rp.client) }
        try await pollUntil("the sync", seconds: 30) { mirror.currentProgress.synced }
        #expect(mirror.currentProgress.selfCheckPassed == true)
        // The data chunk, and a page or so of slack; before, the prefault
        // thread and the zero checks allocated the whole region. Taken
        // before hashing: reading the mapping allocates its holes.
        let held = Self.allocated(replica)
        #expect(held >= Self.chunk && held <= 2 * Self.chunk, "the replica's memfd holds \(held) bytes for one chunk of data")
        #expect(regionSHA(replica) == regionSHA(primary))

        running.cancel()
        await rp.close()
        _ = await running.result
    }
}
