/// Finds changed chunks by hashing every chunk and comparing with the last
/// scan. It sees every write, whoever makes it (another process, `pwrite`),
/// which is why it stays as the fallback. But it costs a full read of the
/// region per scan. The exact userfaultfd tracker replaces it where the
/// mapping allows (a later issue).
public final class ChunkHashScanner: @unchecked Sendable {
    public let region: Region
    /// Each chunk's hash as of the last scan.
    public private(set) var hashes: [UInt64]

    /// Hashes the region as it is now: the first `changedChunks` reports
    /// what changed since this moment.
    public init(region: Region) {
        self.region = region
        hashes = (0..<region.geometry.chunkCount).map { Self.hash(region, chunk: $0) }
    }

    /// Chunks whose bytes differ from the previous scan, ascending.
    public func changedChunks() -> [Int] {
        var changed: [Int] = []
        for i in 0..<hashes.count {
            let h = Self.hash(region, chunk: i)
            if h != hashes[i] {
                hashes[i] = h
                changed.append(i)
            }
        }
        return changed
    }

    /// Four interleaved FNV-1a lanes over 64-bit little-endian words (word
    /// i feeds lane i mod 4), tail bytes into lane 0, then the four lanes
    /// folded FNV-1a style into one. Independent lanes let the CPU overlap
    /// the multiplies: one lane ran ~1 GB/s, which made hashing, not the
    /// network, the cost of a 1 GiB sync. Not cryptographic; part of the
    /// wire protocol (HAVE frames); collisions would hide a change, so the
    /// end-to-end tests compare SHA-256.
    public static func hash(_ region: Region, chunk: Int) -> UInt64 {
        let range = region.geometry.byteRange(ofChunk: chunk)!
        return hash(UnsafeRawBufferPointer(rebasing: region.bytes[range]))
    }

    static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    static let prime: UInt64 = 0x0000_0100_0000_01b3

    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var l0 = offsetBasis, l1 = offsetBasis, l2 = offsetBasis, l3 = offsetBasis
        let words = bytes.count / 8
        var w = 0
        while w + 4 <= words {
            l0 = (l0 ^ bytes.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self)) &* prime
            l1 = (l1 ^ bytes.loadUnaligned(fromByteOffset: w * 8 + 8, as: UInt64.self)) &* prime
            l2 = (l2 ^ bytes.loadUnaligned(fromByteOffset: w * 8 + 16, as: UInt64.self)) &* prime
            l3 = (l3 ^ bytes.loadUnaligned(fromByteOffset: w * 8 + 24, as: UInt64.self)) &* prime
            w += 4
        }
        while w < words {
            let word = bytes.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self)
            switch w % 4 {
            case 0: l0 = (l0 ^ word) &* prime
            case 1: l1 = (l1 ^ word) &* prime
            case 2: l2 = (l2 ^ word) &* prime
            default: l3 = (l3 ^ word) &* prime
            }
            w += 1
        }
        for b in bytes[(words * 8)...] { l0 = (l0 ^ UInt64(b)) &* prime }
        var h = offsetBasis
        for lane in [l0, l1, l2, l3] { h = (h ^ lane) &* prime }
        return h
    }
}
