import MemReplicaSystem
import MemReplicaTransportCore
import DequeModule

/// One stream's state, in two parts. The loop-only part (send buffer,
/// offsets, scheduling) is touched only on the endpoint's loop thread. The
/// `mailbox` is shared with the tasks that read and write, under a lock, so
/// a write below the buffer limit and a read of bytes already here finish
/// without a round trip through the loop: on a request/response exchange
/// that halves the thread wake-ups.
package final class QUICStreamCore: UrgencyScheduled, @unchecked Sendable {
    let id: Int64
    /// Strong: a stream handle may outlive its connection's entry in the
    /// endpoint and must still answer (with the connection's error).
    package let connection: QUICConnectionCore
    let mailbox = Locked(Mailbox())
    private let sendLimit: Int
    private let creditThreshold: Int
    /// Charged for the bytes this stream holds written and not yet
    /// acknowledged (received bytes live in the connection's reserved window).
    let budget: ConnectionSendShare

    // Loop-only.
    var sendBuffer = SendBuffer()
    var finQueued = false
    var finSent = false
    /// In the connection's round-robin queue of streams with data to send.
    package var scheduled = false
    /// Sent before every non-urgent stream (see `TransportStream.prioritize`).
    package var urgent = false
    /// Waiting for the peer to raise the stream's flow-control limit.
    var flowBlocked = false
    /// The stack will take no more data (reset, stop-sending, closed).
    var sendClosed = false
    /// ngtcp2 has closed the stream (both directions done or reset).
    var closedByStack = false
    /// Queued on the endpoint to wake its reader after this batch.
    var wakePending = false
    /// Takes received bytes on this thread instead of a reading task
    /// (`QUICStream.readOnLoop`), with what ends the task's wait.
    private var loopReader: (any LoopStreamReader)?
    private var loopReaderDone: Delivery<Void>?
    /// The loop reader stopped because too much of its output is unacknowledged.
    private var loopReaderWantsRoom = false
    /// When the send buffer last drained a little (or got its first bytes
    /// after being empty): a stream that holds bytes and makes no progress
    /// for `PeerLimits.stalledStreamTimeout` is reset.
    private(set) var lastSendProgress = monotonicNanoseconds()
    static let receiveChunk = 256 << 10

    struct Mailbox {
        // Written by tasks, drained by the loop.
        var outgoing: [UnsafeMutableRawBufferPointer] = []
        var finRequested = false
        /// A drain command is queued on the loop already.
        var drainPosted = false
        var written: UInt64 = 0
        var acknowledged: UInt64 = 0
        /// Bytes writers reserved in the budget and are copying now.
        var reserved = 0
        var writeWaiters: [CheckedContinuation<Void, any Error>] = []
        /// The largest write a waiter wants room for.
        var writeWaitingFor = 0
        var sendError: TransportError?

        // Delivered by the loop, taken by tasks.
        var received = Deque<[UInt8]>()
        var receivedHead = 0
        var buffered = 0
        var finReceived = false
        /// Some of the bytes came in 0-RTT packets (replayable).
        var receivedEarlyData = false
        var receiveError: TransportError?
        var readWaiter: (maxLength: Int, continuation: CheckedContinuation<[UInt8]?, any Error>)?
        /// Bytes read but not yet returned to the peer as credit.
        var unreportedCredit = 0
        var creditPosted = false
        /// The connection forgot this stream: the periodic sweep no longer
        /// returns its credit, so every read does.
        var forgotten = false

        /// Up to maxLength buffered bytes, oldest first.
        mutating func take(maxLength: Int) -> [UInt8]? {
            guard buffered > 0, maxLength > 0 else { return nil }
            var out: [UInt8]
            let first = received[0]
            if receivedHead == 0 && first.count <= maxLength {
                out = first
                received.removeFirst()
                // Coalesce small chunks so one read returns what is there;
                // a big chunk is enough on its own and copying it costs.
                while out.count < 64 << 10, let next = received.first, out.count + next.count <= maxLength {
                    out.append(contentsOf: next)
                    received.removeFirst()
                }
            } else {
                let n = min(maxLength, first.count - receivedHead)
                out = Array(first[receivedHead..<receivedHead + n])
                receivedHead += n
                if receivedHead == first.count {
                    received.removeFirst()
                    receivedHead = 0
                }
            }
            buffered -= out.count
            unreportedCredit += out.count
            return out
        }
    }

    init(id: Int64, connection: QUICConnectionCore) {
        self.id = id
        self.connection = connection
        let config = connection.endpoint.configuration
        sendLimit = config.streamSendBuffer
        budget = connection.sendShare
        // Give credit back in steps: each step is a wake-up of the loop, and
        // an eighth of the window keeps the sender far from blocking.
        creditThreshold = max(1, Int(min(config.streamReceiveWindow, config.connectionReceiveWindow / 8) / 8))
        // Publish the fields above through the lock every task takes before
        // touching them. The continuation that hands this object to a task
        // orders it too, but ThreadSanitizer cannot see through Swift's
        // concurrency runtime on Linux and would report a race.
        mailbox.withLock { _ in }
    }

    deinit {
        // Whatever was not acknowledged before the stream went away.
        let held = mailbox.withLock { m -> Int in
            defer { m.acknowledged = m.written }
            return Int(m.written - m.acknowledged)
        }
        budget.release(held)
    }

    var hasDataToSend: Bool {
        !sendClosed && (sendBuffer.unsent > 0 || (finQueued && !finSent))
    }

    // MARK: task side

    /// Waits until `count` more bytes may be queued, then reserves them in
    /// the memory budget: this stream's unacknowledged bytes stay within
    /// `streamSendBuffer` (a larger write goes alone) and the budget has
    /// room. A stream whose peer stops reading is reset by the loop after
    /// `PeerLimits.stalledStreamTimeout`, which ends this wait.
    func reserve(_ count: Int) async throws {
        enum Next { case reserved, fail(TransportError), wait(budget: Bool) }
        while true {
            let next = mailbox.withLock { m -> Next in
                if let error = m.sendError ?? connection.closeErrorSnapshot { return .fail(error) }
                if m.finRequested { return .fail(.protocolFailure("write after finish on stream \(id)")) }
                guard Self.hasStreamRoom(m, for: count, limit: sendLimit) else { return .wait(budget: false) }
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

    private static func hasStreamRoom(_ m: Mailbox, for count: Int, limit: Int) -> Bool {
        let pending = m.written - m.acknowledged + UInt64(m.reserved)
        return pending == 0 || pending + UInt64(count) <= UInt64(limit)
    }

    /// One wait for room; the caller checks again after it.
    private func waitForRoom(_ count: Int, budget forBudget: Bool) async throws {
        let token = WaitToken()
        let key = ObjectIdentifier(token)
        defer { if forBudget { budget.cancelNotification(key) } }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            if forBudget { budget.notifyOnRelease(key) { [weak self] in self?.wakeWriters() } }
            let resume: Result<Void, TransportError>? = mailbox.withLock { m in
                if let error = m.sendError ?? connection.closeErrorSnapshot { return .failure(error) }
                if Self.hasStreamRoom(m, for: count, limit: sendLimit), !forBudget || budget.hasRoom(for: count) {
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
        let waiters = mailbox.withLock { m -> [CheckedContinuation<Void, any Error>] in
            defer { m.writeWaiters.removeAll(); m.writeWaitingFor = 0 }
            return m.writeWaiters
        }
        waiters.forEach { $0.resume() }
    }

    /// Gives back a reservation that will not be enqueued (the copy it was
    /// for turned out unusable).
    func cancelReservation(_ count: Int) {
        mailbox.withLock { $0.reserved -= count }
        budget.release(count)
    }

    /// Queues owned memory that `reserve` made room for; never waits.
    /// Throws (freeing it) if the stream can no longer send.
    func enqueue(_ memory: UnsafeMutableRawBufferPointer) throws {
        let (refused, post) = mailbox.withLock { m -> (TransportError?, Bool) in
            m.reserved -= memory.count
            if let error = m.sendError ?? connection.closeErrorSnapshot { return (error, false) }
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
        if post { connection.endpoint.post { [self] in drainMailbox() } }
    }

    func finish() throws {
        let post = try mailbox.withLock { m -> Bool in
            if let error = m.sendError ?? connection.closeErrorSnapshot { throw error }
            m.finRequested = true
            defer { m.drainPosted = true }
            return !m.drainPosted
        }
        if post { connection.endpoint.post { [self] in drainMailbox() } }
    }

    func read(maxLength: Int) async throws -> [UInt8]? {
        enum Next { case bytes([UInt8], postCredit: Bool), end, fail(any Error), wait }
        let next = mailbox.withLock { m -> Next in
            if m.readWaiter != nil { return .fail(TransportError.protocolFailure("concurrent reads on stream \(id)")) }
            if let bytes = m.take(maxLength: maxLength) {
                return .bytes(bytes, postCredit: claimCreditPost(&m))
            }
            if m.finReceived { return .end }
            if let error = m.receiveError { return .fail(error) }
            return .wait
        }
        switch next {
        case .bytes(let bytes, let postCredit):
            if connection.noteCreditTaken(bytes.count) {
                connection.endpoint.post { [connection] in connection.returnAllCredit() }
            } else if postCredit {
                connection.endpoint.post { [self] in returnCredit() }
            }
            return bytes
        case .end: return nil
        case .fail(let error): throw error
        case .wait:
            return try await withCheckedThrowingContinuation { c in
                let ready: Result<[UInt8]?, any Error>? = mailbox.withLock { m in
                    if let bytes = m.take(maxLength: maxLength) { return .success(bytes) }
                    if m.finReceived { return .success(nil) }
                    if let error = m.receiveError { return .failure(error) }
                    m.readWaiter = (maxLength, c)
                    return nil
                }
                if let ready {
                    if case .success(let bytes?) = ready {
                                    _ = connection.noteCreditTaken(bytes.count)
                    }
                    connection.endpoint.post { [self] in returnCredit() }
                    c.resume(with: ready)
                }
            }
        }
    }

    private func claimCreditPost(_ m: inout Mailbox) -> Bool {
        guard m.unreportedCredit >= creditThreshold || (m.forgotten && m.unreportedCredit > 0), !m.creditPosted else {
            return false
        }
        m.creditPosted = true
        return true
    }

    // MARK: loop side

    /// Queues bytes from the loop thread itself (early data at connect,
    /// before any task holds this stream).
    func queueFromLoop(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        memory.copyBytes(from: bytes)
        mailbox.withLock { $0.written += UInt64(bytes.count) }
        budget.charge(bytes.count)
        noteAppend()
        sendBuffer.append(owning: memory)
        connection.schedule(self)
    }

    /// The server refused our 0-RTT data and ngtcp2 dropped the stream;
    /// it has been opened again under the same id: send it all again.
    func resendAfterRejectedEarlyData() {
        sendBuffer.rewindToAcknowledged()
        finSent = false
        flowBlocked = false
        connection.schedule(self)
    }

    /// Moves what tasks wrote into the send buffer and schedules sending.
    func drainMailbox() {
        let (chunks, fin) = mailbox.withLock { m -> ([UnsafeMutableRawBufferPointer], Bool) in
            defer { m.outgoing.removeAll(); m.drainPosted = false }
            return (m.outgoing, m.finRequested)
        }
        if sendClosed || connection.isClosed {
            chunks.forEach { $0.deallocate() }
            return
        }
        if !chunks.isEmpty { noteAppend() }
        for c in chunks { sendBuffer.append(owning: c) }
        if fin { finQueued = true }
        connection.schedule(self)
    }

    /// Bytes joining an empty send buffer start the stall clock afresh.
    private func noteAppend() {
        if sendBuffer.unacknowledged == 0 { lastSendProgress = monotonicNanoseconds() }
    }

    /// Holds bytes the peer has not acknowledged, with no progress for `timeout` ns.
    func isStalled(now: UInt64, after timeout: UInt64) -> Bool {
        sendBuffer.unacknowledged > 0 && now >= lastSendProgress && now - lastSendProgress >= timeout
    }

    func acknowledged(upTo offset: UInt64) {
        let before = sendBuffer.ackedOffset
        sendBuffer.acknowledge(upTo: offset)
        if sendBuffer.ackedOffset > before { lastSendProgress = monotonicNanoseconds() }
        if loopReaderWantsRoom, !sendBacklogged, !wakePending {
            // Called inside ngtcp2's packet processing: resume the reader
            // once the batch is done, as for bytes that arrive.
            loopReaderWantsRoom = false
            wakePending = true
            connection.endpoint.wakeLater(self)
        }
        let acked = sendBuffer.ackedOffset
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            let freed = acked > m.acknowledged ? Int(acked - m.acknowledged) : 0
            m.acknowledged = max(m.acknowledged, acked)
            guard !m.writeWaiters.isEmpty, Self.hasStreamRoom(m, for: m.writeWaitingFor, limit: sendLimit) else {
                return ([], freed)
            }
            defer { m.writeWaiters.removeAll(); m.writeWaitingFor = 0 }
            return (m.writeWaiters, freed)
        }
        budget.release(freed)
        waiters.forEach { $0.resume() }
    }

    /// Queues bytes from the peer. A waiting reader is woken later, once
    /// per batch of datagrams (`wakeReader`), not once per packet: a wake-up
    /// per 1.4 KB packet cost more than the rest of the receive path.
    func deliver(_ data: UnsafeRawBufferPointer, fin: Bool, early: Bool = false) {
        let readerWaiting = mailbox.withLock { m -> Bool in
            if early { m.receivedEarlyData = true }
            if data.count > 0 {
                // Packets land in the newest chunk while it has room, so a
                // bulk transfer allocates per 256 KiB, not per packet.
                let last = m.received.count - 1
                if last >= 0, m.received[last].count + data.count <= Self.receiveChunk {
                    m.received[last].append(contentsOf: data)
                } else {
                    var chunk = [UInt8]()
                    chunk.reserveCapacity(max(data.count, Self.receiveChunk))
                    chunk.append(contentsOf: data)
                    m.received.append(chunk)
                }
                m.buffered += data.count
            }
            if fin { m.finReceived = true }
            return m.readWaiter != nil
        }
        if (readerWaiting || loopReader != nil) && !wakePending {
            wakePending = true
            connection.endpoint.wakeLater(self)
        }
    }

    /// A `LoopStreamReader` reads this stream on the loop thread.
    var readsOnLoop: Bool { loopReader != nil }

    /// Hands what arrived to a waiting reader (loop thread).
    func wakeReader() {
        wakePending = false
        if let reader = loopReader {
            reader.streamReadable(self)
            return
        }
        let handoff = mailbox.withLock { m -> (CheckedContinuation<[UInt8]?, any Error>, [UInt8]?)? in
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
        if let (continuation, out) = handoff {
            continuation.resume(returning: out)
            if let out {
                _ = connection.noteCreditTaken(out.count)
                returnCredit()
            }
        }
    }

    /// Opens the windows by what readers took since the last time.
    func returnCredit() {
        let n = mailbox.withLock { m -> Int in
            defer { m.unreportedCredit = 0; m.creditPosted = false }
            return m.unreportedCredit
        }
        connection.consumed(n, on: self)
    }

    /// The peer stopped the receiving or sending half.
    func failSend(_ error: TransportError) {
        sendClosed = true
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            if m.sendError == nil { m.sendError = error }
            // Nothing more will be sent or acknowledged: free it all now.
            let freed = Int(m.written - m.acknowledged)
            m.acknowledged = m.written
            defer { m.writeWaiters.removeAll(); m.writeWaitingFor = 0 }
            return (m.writeWaiters, freed)
        }
        budget.release(freed)
        waiters.forEach { $0.resume(throwing: error) }
    }

    func failReceive(_ error: TransportError) {
        // A loop reader answers requests: what is still buffered has no
        // one to answer to any more.
        endLoopReading(error)
        let waiter = mailbox.withLock { m -> CheckedContinuation<[UInt8]?, any Error>? in
            if m.receiveError == nil { m.receiveError = error }
            // Bytes already here and a FIN still reach the reader first.
            guard m.buffered == 0, !m.finReceived, let w = m.readWaiter else { return nil }
            m.readWaiter = nil
            return w.continuation
        }
        waiter?.resume(throwing: error)
    }

    /// This side reset the stream or stopped reading it: nobody will read
    /// what is buffered. Drops it and gives the connection its credit back;
    /// otherwise every such stream's unread bytes would shrink the
    /// connection's window for good, until no stream could send.
    func discardReceived() {
        let (dropped, taken) = mailbox.withLock { m -> (Int, Int) in
            defer {
                m.received.removeAll()
                m.receivedHead = 0
                m.buffered = 0
                m.unreportedCredit = 0
            }
            return (m.buffered, m.unreportedCredit)
        }
        if taken > 0 { connection.consumed(taken, on: self) }
        if dropped > 0 { connection.returnDiscarded(dropped) }
    }

    /// Ends both directions with `error`, waking everyone waiting.
    func fail(_ error: TransportError) {
        failSend(error)
        failReceive(error)
        sendBuffer.releaseAll()
        let leftovers = mailbox.withLock { m -> [UnsafeMutableRawBufferPointer] in
            defer { m.outgoing.removeAll() }
            return m.outgoing
        }
        leftovers.forEach { $0.deallocate() }
    }

    /// Both directions ended cleanly: nothing more to send or wait for.
    func finishedCleanly() {
        sendBuffer.releaseAll()
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            let freed = Int(m.written - m.acknowledged)
            m.acknowledged = m.written
            defer { m.writeWaiters.removeAll(); m.writeWaitingFor = 0 }
            return (m.writeWaiters, freed)
        }
        budget.release(freed)
        waiters.forEach { $0.resume() }
    }

    // MARK: reading on the loop thread

    /// Hands received bytes to `reader` on this thread from now on, starting
    /// with those buffered already; `done` is completed once, when the
    /// reader ends (`endLoopReading`) or the stream fails.
    func startLoopReading(_ reader: any LoopStreamReader, done: Delivery<Void>) {
        let failed = mailbox.withLock { m -> TransportError? in
            if m.readWaiter != nil { return .protocolFailure("stream \(id) already has a reader") }
            return m.receiveError ?? connection.closeError
        }
        if let failed { done.fail(failed); return }
        loopReader = reader
        loopReaderDone = done
        reader.streamReadable(self)
    }

    /// Ends loop reading (nil: cleanly) and resumes the waiting task. Bytes
    /// arriving later stay buffered for a task's `read`.
    package func endLoopReading(_ error: (any Error)?) {
        guard let done = loopReaderDone else { return }
        loopReader = nil
        loopReaderDone = nil
        loopReaderWantsRoom = false
        if let error { done.fail(error) } else { done.succeed(()) }
    }

    /// Up to `maxLength` received bytes for the loop reader; the peer gets
    /// the credit back at once.
    package func takeOnLoop(maxLength: Int) -> [UInt8]? {
        guard let bytes = mailbox.withLock({ $0.take(maxLength: maxLength) }) else { return nil }
        _ = connection.noteCreditTaken(bytes.count)
        returnCredit()
        return bytes
    }

    /// Whether the peer finished the stream (every byte has been taken).
    package var receivedAllOnLoop: Bool { mailbox.withLock { $0.finReceived && $0.buffered == 0 } }

    /// Queues owned memory from the loop thread; it goes out in this loop
    /// turn. Throws (freeing it) if the stream can no longer send.
    package func sendOnLoop(_ memory: UnsafeMutableRawBufferPointer) throws {
        let refused = mailbox.withLock { m -> TransportError? in
            if let error = m.sendError ?? connection.closeError { return error }
            if m.finRequested || finQueued { return .protocolFailure("write after finish on stream \(id)") }
            m.written += UInt64(memory.count)
            return nil
        }
        if let refused {
            memory.deallocate()
            throw refused
        }
        // The loop answers requests it read itself (fault reads): counted,
        // not waited for; `sendBacklogged` stops it reading on instead.
        budget.charge(memory.count)
        noteAppend()
        sendBuffer.append(owning: memory)
        connection.schedule(self)
    }

    /// More unacknowledged output than a task's `write` would allow.
    package var sendBacklogged: Bool { sendBuffer.unacknowledged > sendLimit }

    /// The loop reader waits for acknowledgments before reading on.
    package func waitForSendRoom() { loopReaderWantsRoom = true }

    var finReceived: Bool { mailbox.withLock { $0.finReceived } }
    var receivedEarlyData: Bool { mailbox.withLock { $0.receivedEarlyData } }
}

/// A unique key for one wait on the memory budget.
private final class WaitToken: Sendable {}
