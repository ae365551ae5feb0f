import MemReplicaSystem

/// What a connection's streams touch from any thread: its part of the send
/// budget, the credit its readers took, and why it closed. The rest of a
/// connection lives on its endpoint's loop thread.
package final class ConnectionSharedState: Sendable {
    /// This connection's part of the budget's send half (its streams reserve there).
    package let sendShare: ConnectionSendShare
    /// Bytes readers took on all streams and not yet returned as
    /// connection-level credit, and whether a sweep is queued: stream-level
    /// thresholds alone could strand a little credit on each of many
    /// streams until the connection window is gone.
    private let credit: Locked<(bytes: Int, sweepPosted: Bool, threshold: Int)>
    private let closedWith = Locked<TransportError?>(nil)

    package init(budget: MemoryBudget, receiveWindow: UInt64) {
        sendShare = ConnectionSendShare(budget: budget)
        credit = Locked((0, false, Self.threshold(receiveWindow)))
    }

    /// A sweep for each eighth of the window read.
    private static func threshold(_ window: UInt64) -> Int { max(1, Int(window / 8)) }

    /// The window is known only now (QUIC reserves it as the connection is
    /// created); published through the lock reading tasks take.
    package func setReceiveWindow(_ window: UInt64) {
        credit.withLock { $0.threshold = Self.threshold(window) }
    }

    /// Counts bytes a reader took; true when the caller must run (or post)
    /// a connection-wide credit sweep (`returnConnectionCredit`): a true
    /// claims it, and no other reader is told until it has run.
    package func noteCreditTaken(_ count: Int) -> Bool {
        credit.withLock { u in
            u.bytes += count
            guard u.bytes >= u.threshold, !u.sweepPosted else { return false }
            u.sweepPosted = true
            return true
        }
    }

    /// The sweep runs (loop thread): the next threshold posts another.
    package func creditSweepStarted() {
        credit.withLock { $0.sweepPosted = false }
    }

    /// `count` bytes went back to the peer as credit. The count may dip
    /// below zero while a reader that took bytes has yet to note them.
    package func creditReturned(_ count: Int) {
        credit.withLock { $0.bytes -= count }
    }

    /// Why the connection ended, readable from any thread.
    package var closeErrorSnapshot: TransportError? { closedWith.withLock { $0 } }

    package func closed(with error: TransportError) {
        closedWith.withLock { $0 = error }
    }
}
