import Crypto
#if canImport(Glibc)
import Glibc
#endif

/// The keyed hash PAGES frames are checked with, built from per-page tags.
///
/// Each 4 KiB page gets a tag, the `ChunkHasher` GMAC of its bytes under the
/// subscription's key; the chunk's hash is the GMAC of its tags (16 bytes
/// each, big-endian, in page order) under a second key derived from the
/// first. A primary keeps the low 64 bits of every tag it sent, to tell
/// which pages of a changed chunk differ, and the chunk hash, to skip a
/// chunk whose new bytes equal what it sent last (a redundant write).
///
/// Why two levels: the page tags come for free while the chunk hash is
/// made, and the chunk hash stays as collision-resistant as one GMAC: two
/// different chunks collide only if some differing page's tags collide
/// (at most 257 / 2^128 per page, the inner key being secret) or the
/// differing tag strings collide under the independent outer key (at most
/// (pages + 1) / 2^128). The 64-bit tags kept by a primary only choose
/// pages: a collision there leaves a changed page out, and the check
/// carried in the frame (this full hash) makes the replica refuse the
/// frame and resubscribe; nothing wrong is kept.
///
/// Not thread-safe (it owns two OpenSSL contexts).
public final class PageTagHasher {
    private let inner: ChunkHasher
    private let outer: ChunkHasher
    /// The tag of a whole page of zeros (zero pages are never hashed).
    public let zeroPageTag: ChunkHash
    private var tagBytes: [UInt8] = []

    public init(key: ChunkHashKey) {
        inner = ChunkHasher(key: key)
        var derive = SHA256()
        derive.update(data: key.bytes)
        derive.update(data: Array("memreplica page tags".utf8))
        outer = ChunkHasher(key: ChunkHashKey(bytes: Array(derive.finalize().prefix(ChunkHashKey.byteCount)))!)
        zeroPageTag = inner.hash([UInt8](repeating: 0, count: PageLayout.pageSize))
        tagBytes.reserveCapacity(FrameLimits.maxPagesPerChunk * ChunkHash.byteCount)
    }

    /// One page's tag; `zero` says the caller found it all zeros.
    public func tag(_ page: UnsafeRawBufferPointer, zero: Bool) -> ChunkHash {
        zero && page.count == PageLayout.pageSize ? zeroPageTag : inner.hash(page)
    }

    /// The chunk hash over tags already computed, in page order.
    public func chunkHash(tags: some Collection<ChunkHash>) -> ChunkHash {
        tagBytes.removeAll(keepingCapacity: true)
        for t in tags { t.append(to: &tagBytes) }
        return tagBytes.withUnsafeBytes { outer.hash($0) }
    }

    /// The chunk hash of `chunk`'s bytes (what a replica checks a PAGES
    /// frame's result with).
    public func chunkHash(_ chunk: UnsafeRawBufferPointer) -> ChunkHash {
        let pages = PageLayout.pageCount(ofChunkBytes: chunk.count)
        return chunkHash(tags: (0..<pages).map { i in
            let page = UnsafeRawBufferPointer(rebasing: chunk[PageLayout.range(ofPage: i, inChunkOf: chunk.count)])
            return tag(page, zero: PageLayout.isZero(page))
        })
    }
}

extension PageLayout {
    /// Whether every byte of `bytes` is zero: the first word, then the
    /// buffer compared with itself one word on (libc's vectorised memcmp).
    public static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        let head = min(8, bytes.count)
        for i in 0..<head where bytes[i] != 0 { return false }
        guard bytes.count > 8 else { return true }
        return memcmp(base, base + 8, bytes.count - 8) == 0
    }
}
