/// Finds changed chunks by hashing every chunk and comparing with the last
/// scan. It sees every change, whoever makes it (another process, `pwrite`),
/// which is why it stays as the fallback wherever the exact
/// `WriteProtectTracker` cannot see every write (file-backed regions) or
/// the kernel does not offer it. But it costs a full read of the region
/// per scan, and a write that leaves a chunk's bytes (or hash) as they
/// were goes unreported.
public final class ChunkHashScanner: DirtyTracker, @unchecked Sendable {
    public let region: Region
    public var kind: DirtyTrackerKind { .hashScan }
    /// Each chunk's hash as of the last scan.
    public private(set) var hashes: [UInt64]
    public private(set) var statistics = DirtyScanStatistics()

    /// Hashes the region as it is now: the first `changedChunks` reports
    /// what changed since this moment. On a region whose backing failed it
    /// stops at once (the first `changedChunks` throws why), rather than
    /// touch every page the file no longer has.
    public init(region: Region) {
        self.region = region
        var hashes = [UInt64](repeating: 0, count: region.geometry.chunkCount)
        if region.unavailability(checkingSize: true) == nil {
            for i in hashes.indices {
                hashes[i] = Self.hash(region, chunk: i)
                if region.unavailability(checkingSize: false) != nil { break }
            }
        }
        self.hashes = hashes
    }

    /// Chunks whose bytes differ from the previous scan, ascending. Throws
    /// `Region.Failure.unavailable` instead once the region's backing failed
    /// (its file's size is checked first, and the SIGBUS count after each
    /// chunk: a hash of bytes the file could not provide is never kept).
    public func changedChunks() throws(Region.Failure) -> [Int] {
        let started = ContinuousClock.now
        var changed: [Int] = []
        try region.checkBacking()
        for i in 0..<hashes.count {
            let h = Self.hash(region, chunk: i)
            try region.checkIntact()
            if h != hashes[i] {
                hashes[i] = h
                changed.append(i)
            }
        }
        statistics.record(ContinuousClock.now - started, changedChunks: changed.count)
        return changed
    }

    /// XXH64 (seed 0) of the chunk's bytes. Part of the wire protocol
    /// (HAVE frames carry it). Not cryptographic, but every input bit
    /// reaches every output bit: the four-lane FNV-style hash used before
    /// (`lane = (lane ^ word) * prime`) let a change confined to the high
    /// bytes of words never reach the low bits, so two such changes in one
    /// lane cancelled about once in 160 tries, and a changed chunk looked
    /// unchanged. The end-to-end tests still compare SHA-256.
    public static func hash(_ region: Region, chunk: Int) -> UInt64 {
        let range = region.geometry.byteRange(ofChunk: chunk)!
        return hash(UnsafeRawBufferPointer(rebasing: region.bytes[range]))
    }

    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    @inline(__always)
    static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        let a = acc &+ input &* p2
        return ((a << 31) | (a >> 33)) &* p1
    }

    @inline(__always)
    static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }

    /// XXH64 with seed 0 (the reference algorithm, little-endian reads).
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let count = bytes.count
        var i = 0
        var h: UInt64
        if count >= 32 {
            var v1 = p1 &+ p2, v2 = p2, v3: UInt64 = 0, v4 = 0 &- p1
            while i + 32 <= count {
                v1 = round(v1, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
                v2 = round(v2, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)))
                v3 = round(v3, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self)))
                v4 = round(v4, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self)))
                i += 32
            }
            h = rotl(v1, 1) &+ rotl(v2, 7) &+ rotl(v3, 12) &+ rotl(v4, 18)
            h = (h ^ round(0, v1)) &* p1 &+ p4
            h = (h ^ round(0, v2)) &* p1 &+ p4
            h = (h ^ round(0, v3)) &* p1 &+ p4
            h = (h ^ round(0, v4)) &* p1 &+ p4
        } else {
            h = p5
        }
        h &+= UInt64(count)
        while i + 8 <= count {
            h ^= round(0, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
            h = rotl(h, 27) &* p1 &+ p4
            i += 8
        }
        if i + 4 <= count {
            h ^= UInt64(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt32.self))) &* p1
            h = rotl(h, 23) &* p2 &+ p3
            i += 4
        }
        while i < count {
            h ^= UInt64(bytes[i]) &* p5
            h = rotl(h, 11) &* p1
            i += 1
        }
        h ^= h >> 33
        h &*= p2
        h ^= h >> 29
        h &*= p3
        h ^= h >> 32
        return h
    }
}
