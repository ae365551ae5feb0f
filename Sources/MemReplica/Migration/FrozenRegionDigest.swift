import MemReplicaSystem
import Foundation

/// The digest a hand-over is checked with: `RegionDigest.synced` over the
/// keyed chunk hashes (`ChunkHasher`, GMAC) of the whole region, under the
/// migration's own key. Both sides hash every byte they hold, so a change
/// the dirty tracker missed fails the hand-over instead of being lost.
/// GMAC, not SHA-256: this runs while the writers are frozen, and GMAC
/// costs about a quarter of SHA-256's time (bench/RESULTS.md, `bench dirty`).
enum FrozenRegionDigest {
    /// Hashes on up to `threads` threads of their own (not the
    /// cooperative pool, which this would stall for the whole pass).
    static func compute(_ region: Region, key: ChunkHashKey,
                        threads: Int = Self.threads) async -> [UInt8] {
        RegionDigest.synced(await hashes(region, key: key, threads: threads))
    }

    static var threads: Int { min(4, max(1, ProcessInfo.processInfo.activeProcessorCount)) }

    /// Every chunk's keyed hash, in chunk order.
    static func hashes(_ region: Region, key: ChunkHashKey, threads: Int = Self.threads) async -> [ChunkHash] {
        let count = region.geometry.chunkCount
        let parts = max(1, min(threads, count))
        let hashes = Locked([ChunkHash](repeating: .none, count: count))
        await withTaskGroup(of: Void.self) { group in
            for part in 0..<parts {
                let range = (count * part / parts)..<(count * (part + 1) / parts)
                group.addTask {
                    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                        let thread = Thread {
                            let hasher = ChunkHasher(key: key)
                            let mine = range.map { hasher.hash(region, chunk: $0) }
                            hashes.withLock { $0.replaceSubrange(range, with: mine) }
                            done.resume()
                        }
                        thread.name = "digest \(region.name)"
                        thread.start()
                    }
                }
            }
        }
        return hashes.withLock { $0 }
    }

    /// Seconds one thread takes per chunk, from hashing a few of them:
    /// what the convergence estimate adds for the digest in the downtime.
    static func secondsPerChunk(_ region: Region, key: ChunkHashKey) -> Double {
        let hasher = ChunkHasher(key: key)
        let sample = min(region.geometry.chunkCount, 64)
        let start = ContinuousClock.now
        for chunk in 0..<sample { _ = hasher.hash(region, chunk: chunk) }
        return start.duration(to: .now).seconds / Double(max(sample, 1))
    }
}
