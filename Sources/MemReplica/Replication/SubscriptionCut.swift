import MemReplicaSystem

/// A post-copy hand-over's cut of one eager subscription
/// (docs/MIGRATION.md, "Modes"): asked for once the writers are frozen,
/// the subscription's publish loop stops pushing at the next chunk and
/// answers with every chunk its mirror may not hold current — the rest of
/// the pass under way, the chunks sent and not yet acknowledged, and what
/// a scan finds changed since its last — and the version the mirror has
/// acknowledged. Every other chunk the mirror holds as the frozen region
/// has it. The loop then pushes nothing more; `release` (the migration
/// was called off) ends the subscription, and the mirror resubscribes and
/// resumes.
public final class SubscriptionCut: Sendable {
    public struct Answer: Sendable, Equatable {
        /// Sorted, each chunk once.
        public var stale: [Int]
        public var acknowledgedVersion: UInt64
    }

    private struct State {
        var answer: Answer?
        var released = false
    }
    private let state = Locked(State())

    init() {}

    /// The loop's answer, once given.
    public var answer: Answer? { state.withLock { $0.answer } }

    var isAnswered: Bool { state.withLock { $0.answer != nil } }
    var isReleased: Bool { state.withLock { $0.released } }

    /// The first loop to answer wins; false for the others.
    func give(_ answer: Answer) -> Bool {
        state.withLock { s in
            guard s.answer == nil else { return false }
            s.answer = answer
            return true
        }
    }

    func release() {
        state.withLock { $0.released = true }
    }
}
