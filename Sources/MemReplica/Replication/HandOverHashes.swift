import MemReplicaSystem
import Foundation

/// A destination's keyed hashes of its copy, kept current while a
/// migration runs, so HANDOVER's check costs the destination nothing while
/// the writers are frozen: one full pass when the migration begins (on
/// threads of its own), then each chunk again as the mirror applies it.
/// A chunk applied while the pass runs is hashed again after it, so the
/// table never holds a hash of bytes the mirror has since replaced.
final class HandOverHashes: Sendable {
    let key: ChunkHashKey
    private let region: Region
    private struct State {
        var hashes: [ChunkHash]
        var complete = false
        /// Applied while the full pass ran.
        var appliedDuringPass: Set<Int> = []
    }
    private let state: Locked<State>
    /// Used by `applied` only, which the mirror calls from one task at a time.
    private let hasher: Locked<ChunkHasher>

    init(region: Region, key: ChunkHashKey) {
        self.region = region
        self.key = key
        state = Locked(State(hashes: [ChunkHash](repeating: .none, count: region.geometry.chunkCount)))
        hasher = Locked(ChunkHasher(key: key))
    }

    /// The full pass; returns when the table is complete.
    func fill() async {
        let hashes = await FrozenRegionDigest.hashes(region, key: key)
        state.withLock { $0.hashes = hashes }
        // Chunks stored while the pass ran may have been hashed before the
        // store: hash them again, until a round finds none new. The table
        // is complete only when the set is empty under the lock, so a
        // store racing a round lands in the next one.
        while true {
            let again = state.withLock { s -> Set<Int> in
                defer { s.appliedDuringPass = [] }
                if s.appliedDuringPass.isEmpty { s.complete = true }
                return s.appliedDuringPass
            }
            if again.isEmpty { return }
            let rehashed = hasher.withLock { h in again.map { ($0, h.hash(region, chunk: $0)) } }
            state.withLock { s in
                for (chunk, hash) in rehashed { s.hashes[chunk] = hash }
            }
        }
    }

    /// The mirror stored `chunk`.
    func applied(_ chunk: Int) {
        let complete = state.withLock { s -> Bool in
            if !s.complete { s.appliedDuringPass.insert(chunk) }
            return s.complete
        }
        guard complete else { return }
        let hash = hasher.withLock { $0.hash(region, chunk: chunk) }
        state.withLock { $0.hashes[chunk] = hash }
    }

    /// `RegionDigest.synced` of the table, nil before the pass completed.
    var digest: [UInt8]? {
        state.withLock { $0.complete ? RegionDigest.synced($0.hashes) : nil }
    }
}
