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
    /// what changed since this moment.
    public init(region: Region, key: ChunkHashKey = .random()) {
        self.region = region
        let hasher = ChunkHasher(key: key)
        self.hasher = hasher
        hashes = (0..<region.geometry.chunkCount).map { hasher.hash(region, chunk: $0) }
    }

    /// Chunks whose bytes differ from the previous scan, ascending.
    public func changedChunks() -> [Int] {
        let started = ContinuousClock.now
        var changed: [Int] = []
        for i in 0..<hashes.count {
            let h = hasher.hash(region, chunk: i)
            if h != hashes[i] {
                hashes[i] = h
                changed.append(i)
            }
        }
        statistics.record(ContinuousClock.now - started, changedChunks: changed.count)
        return changed
    }
}
