import MemReplicaSystem

/// The transport-independent part of one stream: the `mailbox` shared with
/// the tasks that read and write, under a lock, and the budget and credit
/// rules around it. A write below the buffer limit and a read of bytes
/// already here finish without a round trip through the loop: on a
/// request/response exchange that halves the thread wake-ups.
///
/// Nothing here posts to the loop; the methods say when the caller should
/// (`StreamCore` does, for both transports).
package final class StreamCoreState: @unchecked Sendable {
    package let id: Int64
    package let mailbox = Locked(StreamMailbox())
    /// The connection's state streams share (send share, credit, close reason).
    package let shared: ConnectionSharedState
    /// Unsettled bytes a task's `write` may leave before it waits.
    package let sendLimit: Int
    /// Credit goes back in steps: each step is a loop wake-up.
    private let creditThreshold: Int

    /// Charged for the bytes this stream holds written and not yet settled
    /// (received bytes live in the connection's reserved window).
    package var budget: ConnectionSendShare { shared.sendShare }

    package init(id: Int64, shared: ConnectionSharedState, sendLimit: Int, streamReceiveWindow: UInt64,
                 connectionReceiveWindow: UInt64) {
        self.id = id
        self.shared = shared
        self.sendLimit = sendLimit
        // An eighth of the window keeps the sender far from blocking.
        creditThreshold = max(1, Int(min(streamReceiveWindow, connectionReceiveWindow / 8) / 8))
        // Publish the fields above through the lock every task takes before
        // touching them. The continuation that hands this object to a task
        // orders it too, but ThreadSanitizer cannot see through Swift's
        // concurrency runtime on Linux and would report a race.
        mailbox.withLock { _ in }
    }

    deinit {
        // Whatever was not settled before the stream went away.
        let held = mailbox.withLock { m -> Int in
            defer { m.settled = m.written }
            return m.unsettled
        }
        budget.release(held)
    }

    private var closeErrorSnapshot: TransportError? { shared.closeErrorSnapshot }

    // MARK: writing (tasks)

    /// Waits until `count` more bytes may be queued, then reserves them in
    /// the memory budget: this stream's unsettled bytes stay within
    /// `sendLimit` (a larger write goes alone) and the budget has room. A
    /// stream whose peer stops reading is reset by the loop after
    /// `PeerLimits.stalledStreamTimeout`, which ends this wait.
    package func reserve(_ count: Int) async throws {
        enum Next { case reserved, fail(TransportError), wait(budget: Bool) }
        while true {
            let next = mailbox.withLock { m -> Next in
                if let error = m.sendError ?? closeErrorSnapshot { return .fail(error) }
                if m.finRequested { return .fail(.protocolFailure("write after finish on stream \(id)")) }
                guard m.hasSendRoom(for: count, limit: sendLimit) else { return .wait(budget: false) }
                guard budget.tryReserve(count) else { return .wait(budget: true) }
                m.reserved += count
                return .reserved
            }
            switch next {
            case .reserved: return
            case .fail(let error): throw error
            case .wait(let forBudget): try await waitForRoom(count, budget: forBudget)
            }
        }
    }

    /// One wait for room; the caller checks again after it.
    private func waitForRoom(_ count: Int, budget forBudget: Bool) async throws {
        let token = WaitToken()
        let key = ObjectIdentifier(token)
        defer { if forBudget { budget.cancelNotification(key) } }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            if forBudget { budget.notifyOnRelease(key) { [weak self] in self?.wakeWriters() } }
            let resume: Result<Void, TransportError>? = mailbox.withLock { m in
                if let error = m.sendError ?? closeErrorSnapshot { return .failure(error) }
                if m.hasSendRoom(for: count, limit: sendLimit), !forBudget || budget.hasRoom(for: count) {
                    return .success(())
                }
                m.writeWaiters.append(c)
                m.writeWaitingFor = max(m.writeWaitingFor, count)
                return nil
            }
            if let resume { c.resume(with: resume) }
        }
        withExtendedLifetime(token) {}
    }

    /// Wakes every waiting writer to check again (the budget freed room).
    private func wakeWriters() {
        mailbox.withLock { $0.takeWriteWaiters() }.forEach { $0.resume() }
    }

    /// Gives back a reservation that will not be enqueued (the copy it was
    /// for turned out unusable).
    package func cancelReservation(_ count: Int) {
        mailbox.withLock { $0.reserved -= count }
        budget.release(count)
    }

    /// Queues owned memory that `reserve` made room for; never waits.
    /// Throws (freeing it) if the stream can no longer send; true when the
    /// caller should post a drain of the mailbox to the loop.
    package func enqueue(_ memory: UnsafeMutableRawBufferPointer) throws -> Bool {
        let (refused, post) = mailbox.withLock { m -> (TransportError?, Bool) in
            m.reserved -= memory.count
            if let error = m.sendError ?? closeErrorSnapshot { return (error, false) }
            if m.finRequested { return (.protocolFailure("write after finish on stream \(id)"), false) }
            m.outgoing.append(memory)
            m.written += UInt64(memory.count)
            let post = !m.drainPosted
            m.drainPosted = true
            return (nil, post)
        }
        if let refused {
            budget.release(memory.count)
            memory.deallocate()
            throw refused
        }
        return post
    }

    /// Asks for FIN after what is written; true when the caller should post
    /// a drain of the mailbox to the loop.
    package func requestFinish() throws -> Bool {
        try mailbox.withLock { m -> Bool in
            if let error = m.sendError ?? closeErrorSnapshot { throw error }
            m.finRequested = true
            defer { m.drainPosted = true }
            return !m.drainPosted
        }
    }

    // MARK: reading (tasks)

    package enum ReadNow {
        /// With whether the caller should post a credit return.
        case bytes([UInt8], postCredit: Bool)
        case end, fail(any Error), wait
    }

    /// What a read finds without waiting.
    package func readNow(maxLength: Int) -> ReadNow {
        mailbox.withLock { m -> ReadNow in
            if m.readWaiter != nil { return .fail(TransportError.protocolFailure("concurrent reads on stream \(id)")) }
            if let bytes = m.take(maxLength: maxLength) { return .bytes(bytes, postCredit: claimCreditPost(&m)) }
            if m.finReceived { return .end }
            if let error = m.receiveError { return .fail(error) }
            return .wait
        }
    }

    /// Registers `c` as the reader to wake; or, when something arrived
    /// meanwhile, returns it for the caller to resume `c` with.
    package func waitForBytes(maxLength: Int, _ c: CheckedContinuation<[UInt8]?, any Error>)
        -> Result<[UInt8]?, any Error>? {
        mailbox.withLock { m in
            if let bytes = m.take(maxLength: maxLength) { return .success(bytes) }
            if m.finReceived { return .success(nil) }
            if let error = m.receiveError { return .failure(error) }
            m.readWaiter = (maxLength, c)
            return nil
        }
    }

    /// Loop thread: up to `maxLength` received bytes for a reader on the
    /// loop, their credit counted as taken (the caller returns it at once:
    /// the whole connection's when `sweep`, see `noteCreditTaken`).
    package func takeOnLoop(maxLength: Int) -> (bytes: [UInt8], sweep: Bool)? {
        guard let bytes = mailbox.withLock({ $0.take(maxLength: maxLength) }) else { return nil }
        return (bytes, shared.noteCreditTaken(bytes.count))
    }

    private func claimCreditPost(_ m: inout StreamMailbox) -> Bool {
        guard m.unreportedCredit >= creditThreshold || (m.forgotten && m.unreportedCredit > 0), !m.creditPosted else {
            return false
        }
        m.creditPosted = true
        return true
    }

    // MARK: loop side

    /// What tasks wrote since the last drain, and whether FIN was asked for.
    package func takeOutgoing() -> (chunks: [UnsafeMutableRawBufferPointer], fin: Bool) {
        mailbox.withLock { m in
            defer { m.outgoing.removeAll(); m.drainPosted = false }
            return (m.outgoing, m.finRequested)
        }
    }

    /// Frees what tasks wrote and the loop never took.
    package func dropOutgoing() {
        let leftovers = mailbox.withLock { m -> [UnsafeMutableRawBufferPointer] in
            defer { m.outgoing.removeAll() }
            return m.outgoing
        }
        leftovers.forEach { $0.deallocate() }
    }

    /// The transport is done with the bytes up to `offset` (QUIC: acknowledged).
    package func settle(upTo offset: UInt64) {
        settle { m in offset > m.settled ? Int(offset - m.settled) : 0 }
    }

    /// The transport is done with `count` more bytes (TCP: handed to TLS).
    /// A failed send settled everything already.
    package func settle(_ count: Int) {
        settle { m in Int(min(UInt64(count), m.written - m.settled)) }
    }

    private func settle(_ freed: (StreamMailbox) -> Int) {
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            let n = freed(m)
            m.settled += UInt64(n)
            guard !m.writeWaiters.isEmpty, m.hasSendRoom(for: m.writeWaitingFor, limit: sendLimit) else {
                return ([], n)
            }
            return (m.takeWriteWaiters(), n)
        }
        budget.release(freed)
        waiters.forEach { $0.resume() }
    }

    /// Nothing more will be sent or settled: frees it all now and wakes the
    /// writers, with `error` (the stream can no longer send) or without
    /// (it ended cleanly).
    package func settleAll(failing error: TransportError?) {
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            if let error, m.sendError == nil { m.sendError = error }
            let freed = m.unsettled
            m.settled = m.written
            return (m.takeWriteWaiters(), freed)
        }
        budget.release(freed)
        if let error { waiters.forEach { $0.resume(throwing: error) } } else { waiters.forEach { $0.resume() } }
    }

    /// Queues bytes from the peer; true when a reader waits for them (the
    /// transport wakes it once per batch, not per packet or record).
    package func receive(_ data: UnsafeRawBufferPointer, fin: Bool, early: Bool = false) -> Bool {
        mailbox.withLock { m -> Bool in
            if early { m.receivedEarlyData = true }
            m.received.append(data)
            if fin { m.finReceived = true }
            return m.readWaiter != nil
        }
    }

    /// The waiting reader and what it gets (nil: the end), once there is something.
    package func handOffToWaitingReader() -> (CheckedContinuation<[UInt8]?, any Error>, [UInt8]?)? {
        mailbox.withLock { m in
            guard let waiter = m.readWaiter else { return nil }
            if let out = m.take(maxLength: waiter.maxLength) {
                m.readWaiter = nil
                return (waiter.continuation, out)
            }
            if m.finReceived {
                m.readWaiter = nil
                return (waiter.continuation, nil)
            }
            return nil
        }
    }

    /// What readers took since the last time, to return as credit.
    package func takeUnreportedCredit() -> Int {
        mailbox.withLock { m -> Int in
            defer { m.unreportedCredit = 0; m.creditPosted = false }
            return m.unreportedCredit
        }
    }

    /// The receiving half ended with `error`.
    package func failReceive(_ error: TransportError) {
        let waiter = mailbox.withLock { m -> CheckedContinuation<[UInt8]?, any Error>? in
            if m.receiveError == nil { m.receiveError = error }
            // Bytes already here and a FIN still reach the reader first.
            guard m.received.count == 0, !m.finReceived, let w = m.readWaiter else { return nil }
            m.readWaiter = nil
            return w.continuation
        }
        waiter?.resume(throwing: error)
    }

    /// Drops what is buffered (nobody will read it); returns how many bytes
    /// were dropped and how many readers took without their credit going back.
    package func discardReceived() -> (dropped: Int, taken: Int) {
        mailbox.withLock { m -> (Int, Int) in
            defer {
                m.received.removeAll()
                m.unreportedCredit = 0
            }
            return (m.received.count, m.unreportedCredit)
        }
    }

    package var finReceived: Bool { mailbox.withLock { $0.finReceived } }
    package var receivedEarlyData: Bool { mailbox.withLock { $0.receivedEarlyData } }
    /// The peer finished the stream and every byte has been taken.
    package var receivedAll: Bool { mailbox.withLock { $0.finReceived && $0.received.count == 0 } }
}

/// A unique key for one wait on the memory budget.
private final class WaitToken: Sendable {}
