/// The primary's side of PAGES frames for one subscription: what the
/// mirror was last sent of each chunk (64-bit page tags and the chunk's
/// `PageTagHasher` hash), and from that how to send a chunk now:
/// - not at all, when its bytes equal what was sent last (redundant);
/// - as the pages that differ, zero pages named without bytes;
/// - compressed, when `CompressionPolicy` finds it worth it;
/// - or whole, as a plain WRITE, when every page is new and nothing compresses.
///
/// Memory: 8 bytes per 4 KiB page and 16 per chunk (0.2 % of the region),
/// plus two chunk-sized buffers while a pass runs (`releaseBuffers` after
/// it: a peer following many idle regions holds none). A chunk the mirror
/// may hold differently from what was sent (a resumed subscription's) is
/// unknown until first sent whole: only its zero pages are left out then.
final class ChunkEncoder {
    enum Encoded {
        /// Equal to what the mirror was last sent: send nothing.
        case redundant
        /// Send the bytes whole (WRITE).
        case whole
        /// Send this frame, whose page bytes are `body`.
        case pages(Frame.Pages, body: UnsafeRawBufferPointer)
    }

    private let pagesPerChunk: Int
    private let hasher: PageTagHasher
    private var pageTags: [UInt64]
    private var chunkHashes: [ChunkHash]
    private var tags: [ChunkHash] = []
    private let chunkSize: Int
    /// The pages a frame carries, gathered; then compressed. Made at the
    /// first chunk that needs them, freed by `releaseBuffers`.
    private var gatheredBuffer: UnsafeMutableRawBufferPointer?
    private var compressedBuffer: UnsafeMutableRawBufferPointer?
    private let compressor = PageCompressor()
    private(set) var policy: CompressionPolicy
    /// What this encoder saved so far (the caller adds wire bytes).
    var savings = WireSavings()
    /// Whether the last chunk encoded was all zeros.
    private(set) var lastWasZero = false

    init(geometry: RegionGeometry, key: ChunkHashKey, codec: PageCodec) {
        pagesPerChunk = geometry.chunkSize / PageLayout.pageSize
        hasher = PageTagHasher(key: key)
        pageTags = [UInt64](repeating: 0, count: geometry.chunkCount * pagesPerChunk)
        chunkHashes = [ChunkHash](repeating: .none, count: geometry.chunkCount)
        chunkSize = geometry.chunkSize
        policy = CompressionPolicy(codec: codec)
    }

    deinit { releaseBuffers() }

    /// Frees the chunk-sized buffers; a frame `encode` returned must have
    /// been sent first (its body points into them).
    func releaseBuffers() {
        gatheredBuffer?.deallocate()
        compressedBuffer?.deallocate()
        gatheredBuffer = nil
        compressedBuffer = nil
    }

    private var gathered: UnsafeMutableRawBufferPointer {
        if let b = gatheredBuffer { return b }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        gatheredBuffer = b
        return b
    }

    private var compressed: UnsafeMutableRawBufferPointer {
        if let b = compressedBuffer { return b }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: PageCompressor.bound(chunkSize), alignment: 64)
        compressedBuffer = b
        return b
    }

    /// `encode` for a chunk found all zeros in the live mapping, without a
    /// copy (a write racing the check is the tracker's, as for a WRITE).
    func encodeZero(_ chunk: Int, byteCount: Int) -> Encoded {
        let pages = PageLayout.pageCount(ofChunkBytes: byteCount)
        if zeroChunkHash == nil || zeroChunkHash!.count != byteCount {
            let zeros = [UInt8](repeating: 0, count: byteCount)
            zeroChunkHash = (byteCount, zeros.withUnsafeBytes { hasher.chunkHash($0) })
        }
        let hash = zeroChunkHash!.hash
        lastWasZero = true
        let known = chunkHashes[chunk] != .none
        if known && chunkHashes[chunk] == hash {
            savings.redundantChunks += 1
            return .redundant
        }
        chunkHashes[chunk] = hash
        let firstTag = chunk * pagesPerChunk
        let zeroTag = hasher.zeroPageTag
        var zero = [UInt8](repeating: 0, count: Frame.Pages.maskBytes(pages: pages))
        var zeros = 0, unchanged = 0
        for i in 0..<pages {
            let full = PageLayout.range(ofPage: i, inChunkOf: byteCount).count == PageLayout.pageSize
            // A short last page's tag is its own; it is always named.
            if known && full && pageTags[firstTag + i] == zeroTag.low {
                unchanged += 1
                continue
            }
            if full { pageTags[firstTag + i] = zeroTag.low } else { pageTags[firstTag + i] = 0 }
            zero[i >> 3] |= 1 << UInt8(i & 7)
            zeros += 1
        }
        if unchanged > 0 { savings.deltaChunks += 1 }
        savings.zeroPages += UInt64(zeros)
        if zeros == pages { savings.zeroChunks += 1 }
        let frame = Frame.Pages(chunk: UInt64(chunk), version: 0, pageCount: pages, present: [UInt8](repeating: 0, count: zero.count),
                                zero: zero, codec: .none, check: unchanged > 0 ? hash : nil, payload: [])
        return .pages(frame, body: UnsafeRawBufferPointer(start: nil, count: 0))
    }
    private var zeroChunkHash: (count: Int, hash: ChunkHash)?

    /// How to send `chunk`, whose bytes now are `bytes` (a snapshot that
    /// stays unchanged until the frame is queued). Records them as what the
    /// mirror holds once the frame is applied.
    func encode(_ chunk: Int, _ bytes: UnsafeRawBufferPointer) -> Encoded {
        let pages = PageLayout.pageCount(ofChunkBytes: bytes.count)
        let firstTag = chunk * pagesPerChunk
        let known = chunkHashes[chunk] != .none
        var zero = [UInt8](repeating: 0, count: Frame.Pages.maskBytes(pages: pages))
        var present = zero
        var unchanged = 0, zeros = 0, gatheredCount = 0, zeroNow = 0
        tags.removeAll(keepingCapacity: true)
        for i in 0..<pages {
            let range = PageLayout.range(ofPage: i, inChunkOf: bytes.count)
            let page = UnsafeRawBufferPointer(rebasing: bytes[range])
            let isZero = PageLayout.isZero(page)
            if isZero { zeroNow += 1 }
            let tag = hasher.tag(page, zero: isZero)
            tags.append(tag)
            if known && pageTags[firstTag + i] == tag.low {
                unchanged += 1
                continue
            }
            pageTags[firstTag + i] = tag.low
            if isZero {
                zero[i >> 3] |= 1 << UInt8(i & 7)
                zeros += 1
            } else {
                present[i >> 3] |= 1 << UInt8(i & 7)
                UnsafeMutableRawBufferPointer(rebasing: gathered[gatheredCount..<gatheredCount + page.count]).copyMemory(from: page)
                gatheredCount += page.count
            }
        }
        let hash = hasher.chunkHash(tags: tags)
        let previous = chunkHashes[chunk]
        chunkHashes[chunk] = hash
        lastWasZero = zeroNow == pages
        if known && hash == previous {
            savings.redundantChunks += 1
            return .redundant
        }
        if unchanged > 0 { savings.deltaChunks += 1 }
        savings.zeroPages += UInt64(zeros)
        if zeros == pages { savings.zeroChunks += 1 }
        var codec = PageCodec.none
        var body = gatheredCount > 0 ? UnsafeRawBufferPointer(rebasing: gathered[..<gatheredCount])
                                     : UnsafeRawBufferPointer(start: nil, count: 0)
        if gatheredCount > 0, policy.shouldCompress() {
            let began = ContinuousClock.now
            let size = compressor.compress(body, with: policy.codec, into: compressed)
            let took = began.duration(to: .now).seconds
            savings.compressionSeconds += took
            policy.compressed(raw: gatheredCount, output: size ?? gatheredCount, seconds: took)
            if let size, size < gatheredCount {
                codec = policy.codec
                savings.compressionInputBytes += UInt64(gatheredCount)
                savings.compressionOutputBytes += UInt64(size)
                body = UnsafeRawBufferPointer(rebasing: compressed[..<size])
            }
        }
        if codec == .none && gatheredCount == bytes.count { return .whole }
        let frame = Frame.Pages(chunk: UInt64(chunk), version: 0, pageCount: pages, present: present, zero: zero,
                                codec: codec, check: unchanged > 0 ? hash : nil, payload: [])
        return .pages(frame, body: body)
    }

    /// When the compression policy wants the link's rate again.
    private var nextLinkPoll = ContinuousClock.now

    /// Gives the compression policy the link's rate from `stream`, at most
    /// once per `CompressionPolicy.linkPollInterval` (asking costs a hop to
    /// the transport's loop).
    func pollLink(_ stream: any TransportStream) async {
        guard policy.codec != .none else { return }
        let now = ContinuousClock.now
        guard now >= nextLinkPoll else { return }
        nextLinkPoll = now + CompressionPolicy.linkPollInterval
        policy.link(bytesPerSecond: await stream.sendRate())
    }
}
