import MemReplicaSystem
/// One connection's part of the memory budget's send half: its streams'
/// writes reserve here, which reserves in the shared budget too.
///
/// A connection holds at most half the send half (`cap`), unless it holds
/// nothing (a write larger than the cap goes alone), so a peer that fills
/// its send buffers and never reads can delay other connections' writes by
/// nothing more than the half it cannot take: a mirror's pushes go on
/// through a flood on another connection instead of waiting for the
/// flood's streams to be reset as stalled.
package final class ConnectionSendShare: Sendable {
    let budget: MemoryBudget
    /// The most this connection's unacknowledged sends may hold.
    let cap: Int
    private let sending = Locked(0)

    /// Freed send copies kept for reuse (the budget's).
    package var copies: SendCopyCache { budget.copies }

    package init(budget: MemoryBudget) {
        self.budget = budget
        cap = budget.sendShare / 2
    }

    /// Takes `count` bytes if this connection's cap and the budget have room; never waits.
    package func tryReserve(_ count: Int) -> Bool {
        sending.withLock { held in
            guard held == 0 || held + count <= cap, budget.tryReserve(count) else { return false }
            held += count
            return true
        }
    }

    /// Whether `count` bytes would fit now.
    package func hasRoom(for count: Int) -> Bool {
        sending.withLock { $0 == 0 || $0 + count <= cap } && budget.hasRoom(for: count)
    }

    /// Charges bytes that are not held back (see `MemoryBudget.charge`).
    package func charge(_ count: Int) {
        guard count > 0 else { return }
        sending.withLock { $0 += count }
        budget.charge(count)
    }

    /// Gives bytes back; the budget wakes every waiting writer, this
    /// connection's too, to check again.
    package func release(_ count: Int) {
        guard count > 0 else { return }
        sending.withLock { $0 -= count }
        budget.release(count)
    }

    package func notifyOnRelease(_ key: ObjectIdentifier, _ wake: @escaping @Sendable () -> Void) {
        budget.notifyOnRelease(key, wake)
    }

    package func cancelNotification(_ key: ObjectIdentifier) {
        budget.cancelNotification(key)
    }
}
