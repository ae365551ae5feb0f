import MemReplicaSystem
/// What one connection's readers may hold of the bytes they read: frames
/// being assembled and frames their handlers still hold (`FrameStream`).
///
/// Flow control only bounds what waits unread in a transport's receive
/// buffers; once read, bytes are the reader's. A handler that holds a frame
/// while its answer cannot be sent (a peer that asks and never reads) would
/// otherwise hold a frame per stream, hundreds per connection. With an
/// allowance the connection's readers hold at most `limit` bytes (its
/// receive window), or one frame alone when a frame is larger; a reader
/// over it waits, and the frames it has not read stay in the receive
/// window, so the peer's own flow control stops it. Waits are per
/// connection: one connection's frames never hold up another's.
///
/// Takes are reserved before the bytes are read, and only for bytes the
/// peer has committed to (the rest of a frame whose header arrived): a
/// peer that stops mid-frame only holds up its own connection. Used on
/// the streams peers open to us (`PeerService`), where requests come from.
public final class FrameAllowance: Sendable {
    /// Bytes held at once, unless one frame alone is larger.
    public let limit: Int
    private let budget: MemoryBudget
    private let state = Locked(State())

    private struct State {
        var held = 0
        var waiters: [(id: UInt64, count: Int, resume: CheckedContinuation<Void, any Error>)] = []
        var nextWaiter: UInt64 = 0
        /// Waits begun and not yet granted or queued.
        var starting: Set<UInt64> = []
        /// Of those, the ones cancelled already (the handler ran first).
        var cancelled: Set<UInt64> = []
    }

    package init(limit: Int, budget: MemoryBudget) {
        self.limit = max(limit, 1)
        self.budget = budget
    }

    /// Bytes held now.
    public var held: Int { state.withLock { $0.held } }

    /// Takes `count` bytes if they fit now and nobody waits before us.
    package func tryTake(_ count: Int) -> Bool {
        guard count > 0 else { return true }
        let taken = state.withLock { s -> Bool in
            guard s.waiters.isEmpty, fits(count, held: s.held) else { return false }
            s.held += count
            return true
        }
        if taken { budget.chargeInHand(count) }
        return taken
    }

    /// Waits until `count` bytes fit, first come first served, and takes
    /// them. Throws `CancellationError` if the task is cancelled meanwhile.
    package func take(_ count: Int) async throws {
        guard count > 0, !tryTake(count) else { return }
        let id = state.withLock { s -> UInt64 in
            s.nextWaiter += 1
            s.starting.insert(s.nextWaiter)
            return s.nextWaiter
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (resume: CheckedContinuation<Void, any Error>) in
                enum Outcome { case granted, queued, cancelled }
                let outcome = state.withLock { s -> Outcome in
                    s.starting.remove(id)
                    if s.cancelled.remove(id) != nil { return .cancelled }
                    if s.waiters.isEmpty, fits(count, held: s.held) {
                        s.held += count
                        return .granted
                    }
                    s.waiters.append((id, count, resume))
                    return .queued
                }
                switch outcome {
                case .granted:
                    budget.chargeInHand(count)
                    resume.resume()
                case .cancelled:
                    resume.resume(throwing: CancellationError())
                case .queued:
                    break
                }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else {
                    // Not queued yet: the wait ends as soon as it would begin.
                    if s.starting.contains(id) { s.cancelled.insert(id) }
                    return nil
                }
                return s.waiters.remove(at: i).resume
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Gives bytes back and lets waiters in, in order, while they fit.
    package func give(_ count: Int) {
        guard count > 0 else { return }
        var granted: [(count: Int, resume: CheckedContinuation<Void, any Error>)] = []
        state.withLock { s in
            s.held -= count
            assert(s.held >= 0, "a frame allowance got back more than it gave")
            while let first = s.waiters.first, fits(first.count, held: s.held) {
                s.waiters.removeFirst()
                s.held += first.count
                granted.append((first.count, first.resume))
            }
        }
        budget.releaseInHand(count)
        for g in granted {
            budget.chargeInHand(g.count)
            g.resume.resume()
        }
    }

    private func fits(_ count: Int, held: Int) -> Bool {
        held + count <= limit || held == 0
    }
}
