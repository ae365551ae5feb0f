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

    /// FNV-1a over 64-bit little-endian words (then single bytes for a
    /// tail): not cryptographic, just fast (~GB/s) and sensitive to any
    /// changed byte. Part of the wire protocol (HAVE frames). Collisions
    /// would hide a change, so the end-to-end tests compare SHA-256.
    public static func hash(_ region: Region, chunk: Int) -> UInt64 {
        let range = region.geometry.byteRange(ofChunk: chunk)!
        let bytes = UnsafeRawBufferPointer(rebasing: region.bytes[range])
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        let words = bytes.count / 8
        for w in 0..<words {
            h = (h ^ bytes.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self)) &* 0x0000_0100_0000_01b3
        }
        for b in bytes[(words * 8)...] {
            h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3
        }
        return h
    }
}
