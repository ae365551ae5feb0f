import MemReplica
import MemReplicaSystem
/// Follows one write at a time: the first version of its chunk copied after
/// the store completed, then the first ACK that covers that version. (The
/// userfaultfd tracker may report a page as soon as the store faults, before
/// it lands; the chunk is then reported again and sent in a later version.)
/// Only `region`'s sends and ACKs count: other regions of the same exports
/// carry chunk numbers and versions of their own.
final class LagProbe: ReplicationObserver {
    let region: String
    private struct Expectation {
        var chunk: Int
        var writtenAt: ContinuousClock.Instant
        var landedAt: ContinuousClock.Instant
        var carriedBy: UInt64?
        var acknowledgedAt: ContinuousClock.Instant?
    }
    private let state = Locked<Expectation?>(nil)

    init(region: String) { self.region = region }

    func expect(chunk: Int, writtenAt: ContinuousClock.Instant, landedAt: ContinuousClock.Instant) {
        state.withLock { $0 = Expectation(chunk: chunk, writtenAt: writtenAt, landedAt: landedAt) }
    }

    func lag() -> Duration? {
        state.withLock { e in e?.acknowledgedAt.map { $0 - e!.writtenAt } }
    }

    func willSend(region: String, chunk: Int, version: UInt64, at: ContinuousClock.Instant) {
        guard region == self.region else { return }
        state.withLock { e in
            if e?.chunk == chunk, e?.carriedBy == nil, let landed = e?.landedAt, at >= landed { e?.carriedBy = version }
        }
    }

    func acknowledged(region: String, peer: String, version: UInt64, at: ContinuousClock.Instant) {
        guard region == self.region else { return }
        state.withLock { e in
            if let carried = e?.carriedBy, e?.acknowledgedAt == nil, version >= carried { e?.acknowledgedAt = at }
        }
    }
}

