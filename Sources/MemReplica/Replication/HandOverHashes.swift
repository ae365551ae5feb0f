import MemReplicaSystem
import Foundation

/// A destination's keyed hashes of its copy, kept current while a
/// migration runs, so HANDOVER's check costs the destination nothing while
/// the writers are frozen: one full pass when the migration begins (on
/// threads of its own), then each chunk again as the mirror applies it.
///
/// Each chunk has a sequence number that every store raises; a hash is
/// written only if no store came since its bytes were read, so a late,
/// older hash never replaces a newer one. The pass ends after one more
/// round over the chunks stored while it ran, however busy the mirror is.
final class HandOverHashes: Sendable {
    let key: ChunkHashKey
    private let region: Region
    private struct State {
        var hashes: [ChunkHash]
        var sequence: [UInt64]
        var complete = false
        /// Stored while the full pass ran.
        var appliedDuringPass: Set<Int> = []
    }
    private let state: Locked<State>
    /// Used by `applied` (one task at a time, the mirror's) and by `fill`'s last round.
    private let hasher: Locked<ChunkHasher>

    init(region: Region, key: ChunkHashKey) {
        self.region = region
        self.key = key
        let count = region.geometry.chunkCount
        state = Locked(State(hashes: [ChunkHash](repeating: .none, count: count), sequence: [UInt64](repeating: 0, count: count)))
        hasher = Locked(ChunkHasher(key: key))
    }

    /// The full pass; returns when the table is complete.
    func fill() async {
        let hashes = await FrozenRegionDigest.hashes(region, key: key)
        // From here on every store hashes its own chunk; those stored while
        // the pass ran may have been read before the store: once more each.
        let again = state.withLock { s -> [(Int, UInt64)] in
            s.hashes = hashes
            s.complete = true
            defer { s.appliedDuringPass = [] }
            return s.appliedDuringPass.map { ($0, s.sequence[$0]) }
        }
        for (chunk, seen) in again { rehash(chunk, seen: seen) }
    }

    /// The mirror stored `chunk`.
    func applied(_ chunk: Int) {
        let (complete, seen) = state.withLock { s -> (Bool, UInt64) in
            s.sequence[chunk] &+= 1
            if !s.complete { s.appliedDuringPass.insert(chunk) }
            return (s.complete, s.sequence[chunk])
        }
        if complete { rehash(chunk, seen: seen) }
    }

    /// Hashes `chunk` and keeps the hash unless a store came after `seen`.
    private func rehash(_ chunk: Int, seen: UInt64) {
        let hash = hasher.withLock { $0.hash(region, chunk: chunk) }
        state.withLock { s in
            if s.sequence[chunk] == seen { s.hashes[chunk] = hash }
        }
    }

    /// `RegionDigest.synced` of the table, nil before the pass completed.
    var digest: [UInt8]? {
        state.withLock { $0.complete ? RegionDigest.synced($0.hashes) : nil }
    }
}
