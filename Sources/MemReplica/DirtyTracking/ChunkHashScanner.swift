/// Finds changed chunks by hashing every chunk and comparing with the last
/// scan. It sees every change, whoever makes it (another process, `pwrite`),
/// which is why it stays as the fallback wherever the exact
/// `WriteProtectTracker` cannot see every write (file-backed regions) or
/// the kernel does not offer it. But it costs a full read of the region
/// per scan, and a write that leaves a chunk's bytes as they were goes
/// unreported (there is nothing to send).
///
/// The hash is keyed (`ChunkHasher`) with a key made for this scanner and
/// kept in memory only: a writer who cannot read this process cannot craft
/// a change that keeps a chunk's hash.
public final class ChunkHashScanner: DirtyTracker, @unchecked Sendable {
    public let region: Region
    public var kind: DirtyTrackerKind { .hashScan }
    /// Each chunk's hash as of the last scan.
    public private(set) var hashes: [ChunkHash]
    public private(set) var statistics = DirtyScanStatistics()
    private let hasher: ChunkHasher

    /// Hashes the region as it is now: the first `changedChunks` reports
    /// what changed since this moment. On a region whose backing failed it
    /// stops at once (the first `changedChunks` throws why), rather than
    /// touch every page the file no longer has.
    public init(region: Region, key: ChunkHashKey = .random()) {
        self.region = region
        let hasher = ChunkHasher(key: key)
        self.hasher = hasher
        var hashes = [ChunkHash](repeating: .none, count: region.geometry.chunkCount)
        if region.unavailability(checkingSize: true) == nil {
            for i in hashes.indices {
                hashes[i] = hasher.hash(region, chunk: i)
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
            let h = hasher.hash(region, chunk: i)
            try region.checkIntact()
            if h != hashes[i] {
                hashes[i] = h
                changed.append(i)
            }
        }
        statistics.record(ContinuousClock.now - started, changedChunks: changed.count)
        return changed
    }
}
