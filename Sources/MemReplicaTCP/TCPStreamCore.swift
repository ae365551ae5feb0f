import MemReplicaSystem
import MemReplicaTransportCore
import DequeModule

/// One stream of a TCP transport connection, in two parts as in
/// `QUICStreamCore`: the loop-only part (send queue, offsets, credit) is
/// touched only on the endpoint's loop thread; the `mailbox` is shared with
/// the tasks that read and write, under a lock, so a write below the buffer
/// limit and a read of bytes already here finish without a loop round trip.
///
/// Flow control is the mux's own: the receiver grants each stream a window
/// (SETTINGS, then WINDOW records as its reader takes bytes), so a slow
/// reader stops its sender, never the TCP connection or memory. `write`
/// suspends while more than `streamSendBuffer` bytes wait to be framed.
final class TCPStreamCore: UrgencyScheduled, @unchecked Sendable {
    let id: Int64
    /// Strong: a stream handle may outlive its connection's tables and must
    /// still answer (with the connection's error).
    let connection: TCPConnectionCore
    /// The TCP connection this stream's records travel on.
    let link: TCPLink
    let mailbox = Locked(TCPStreamMailbox())
    private let sendLimit: Int
    private let creditThreshold: Int
    /// Charged for the bytes this stream holds written and not yet handed
    /// to TLS (received bytes live in the connection's reserved window).
    let budget: ConnectionSendShare
    static let receiveChunk = 256 << 10
    /// When the send queue last drained a little (or got bytes while
    /// empty): a stream that holds bytes and makes no progress for
    /// `PeerLimits.stalledStreamTimeout` is reset.
    private(set) var lastSendProgress = monotonicNanoseconds()

    // Loop-only: sending.
    private var queue = Deque<UnsafeMutableRawBufferPointer>()
    private var queueHead = 0
    private(set) var queuedBytes = 0
    private(set) var sentOffset: UInt64 = 0
    /// How far the peer lets us send (its window plus every WINDOW).
    private(set) var sendCredit: UInt64
    private(set) var finQueued = false
    private(set) var finSent = false
    private(set) var resetSent = false
    /// In its link's round-robin of streams with something to send.
    var scheduled = false
    /// Framed before every non-urgent stream of its link (`TransportStream.prioritize`).
    var urgent = false
    /// Waiting in the connection's list for connection-level credit.
    var waitingForConnectionCredit = false
    var sendDone: Bool { finSent || resetSent }

    // Loop-only: receiving.
    private(set) var receivedOffset: UInt64 = 0
    private(set) var receiveLimit: UInt64
    private(set) var finReceived = false
    private(set) var resetReceived = false
    /// This side stopped reading: what still arrives is dropped.
    private(set) var discarding = false
    var receiveDone: Bool { finReceived || resetReceived }
    /// Queued on the endpoint to wake its reader after this batch.
    var wakePending = false
    /// Both directions are done and the connection forgot the stream.
    var removed = false

    init(id: Int64, connection: TCPConnectionCore, link: TCPLink, sendCredit: UInt64) {
        self.id = id
        self.connection = connection
        self.link = link
        self.sendCredit = sendCredit
        let config = connection.endpoint.configuration
        sendLimit = config.streamSendBuffer
        budget = connection.sendShare
        receiveLimit = connection.streamReceiveWindow
        // Credit goes back in steps: each step is a loop wake-up, and an
        // eighth of the window keeps the sender far from blocking.
        creditThreshold = max(1, Int(min(connection.streamReceiveWindow, connection.receiveWindow / 8) / 8))
        // Publish the fields above through the lock every task takes first
        // (ThreadSanitizer cannot see the continuation's ordering on Linux).
        mailbox.withLock { _ in }
    }

    deinit {
        queue.forEach { $0.deallocate() }
        // Whatever was not sent before the stream went away.
        let held = mailbox.withLock { m -> Int in
            defer { m.handedOff = m.written }
            return Int(m.written - m.handedOff)
        }
        budget.release(held)
    }

    // MARK: task side

    /// Waits until `count` more bytes may be queued, then reserves them in
    /// the memory budget: this stream's bytes not yet handed to TLS stay
    /// within `streamSendBuffer` (a larger write goes alone) and the budget
    /// has room. A stream whose peer stops reading is reset by the loop
    /// after `PeerLimits.stalledStreamTimeout`, which ends this wait.
    func reserve(_ count: Int) async throws {
        enum Next { case reserved, fail(TransportError), wait(budget: Bool) }
        while true {
            let next = mailbox.withLock { m -> Next in
                if let error = m.sendError ?? connection.closeErrorSnapshot { return .fail(error) }
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
        let token = TCPWaitToken()
        let key = ObjectIdentifier(token)
        defer { if forBudget { budget.cancelNotification(key) } }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            if forBudget { budget.notifyOnRelease(key) { [weak self] in self?.wakeWriters() } }
            let resume: Result<Void, TransportError>? = mailbox.withLock { m in
                if let error = m.sendError ?? connection.closeErrorSnapshot { return .failure(error) }
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
            if let bytes = m.take(maxLength: maxLength) { return .bytes(bytes, postCredit: claimCreditPost(&m)) }
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

    private func claimCreditPost(_ m: inout TCPStreamMailbox) -> Bool {
        guard m.unreportedCredit >= creditThreshold || (m.forgotten && m.unreportedCredit > 0), !m.creditPosted else {
            return false
        }
        m.creditPosted = true
        return true
    }

    // MARK: loop side, sending

    /// Moves what tasks wrote into the send queue and schedules sending.
    func drainMailbox() {
        let (chunks, fin) = mailbox.withLock { m -> ([UnsafeMutableRawBufferPointer], Bool) in
            defer { m.outgoing.removeAll(); m.drainPosted = false }
            return (m.outgoing, m.finRequested)
        }
        if sendDone || connection.isClosed {
            chunks.forEach { $0.deallocate() }
            return
        }
        if queuedBytes == 0, !chunks.isEmpty { lastSendProgress = connection.endpoint.now }
        for c in chunks {
            queue.append(c)
            queuedBytes += c.count
        }
        if fin { finQueued = true }
        link.schedule(self)
    }

    /// Data the peer's stream window lets through now (connection credit aside).
    var streamCreditLeft: Int { Int(clamping: sendCredit - min(sendCredit, sentOffset)) }

    /// Something to frame once connection credit allows.
    var hasWork: Bool {
        !sendDone && ((queuedBytes > 0 && streamCreditLeft > 0) || (queuedBytes == 0 && finQueued))
    }

    /// Frames one DATA record of at most `maxRecord` bytes (and FIN once the
    /// queue is empty) into `out`; returns the bytes written and how many of
    /// them were stream data.
    func frame(into out: UnsafeMutableRawBufferPointer, connectionCredit: Int, maxRecord: Int) -> (written: Int, data: Int) {
        var written = 0
        var data = 0
        let room = out.count - MuxLimits.maxHeader
        if !sendDone, queuedBytes > 0, room > 0 {
            let n = min(queuedBytes, streamCreditLeft, connectionCredit, maxRecord, room)
            if n > 0 {
                written = MuxRecord.writeHeader(.data, stream: id, length: n, to: out.baseAddress!)
                var copied = 0
                while copied < n {
                    let chunk = queue[0]
                    let take = min(chunk.count - queueHead, n - copied)
                    (out.baseAddress! + written + copied).copyMemory(from: chunk.baseAddress! + queueHead, byteCount: take)
                    copied += take
                    queueHead += take
                    if queueHead == chunk.count {
                        chunk.deallocate()
                        queue.removeFirst()
                        queueHead = 0
                    }
                }
                written += n
                data = n
                queuedBytes -= n
                sentOffset += UInt64(n)
                handedOff(n)
            }
        }
        if !sendDone, queuedBytes == 0, finQueued, out.count - written >= MuxLimits.maxHeader {
            written += MuxRecord.writeHeader(.fin, stream: id, length: 0, to: out.baseAddress! + written)
            finSent = true
        }
        return (written, data)
    }

    private func handedOff(_ count: Int) {
        lastSendProgress = connection.endpoint.now
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            // A failed send freed everything already.
            let freed = Int(min(UInt64(count), m.written - m.handedOff))
            m.handedOff += UInt64(freed)
            guard !m.writeWaiters.isEmpty, m.hasSendRoom(for: m.writeWaitingFor, limit: sendLimit) else { return ([], freed) }
            defer { m.writeWaiters.removeAll(); m.writeWaitingFor = 0 }
            return (m.writeWaiters, freed)
        }
        budget.release(freed)
        waiters.forEach { $0.resume() }
    }

    /// Holds bytes not yet handed to TLS, with no progress for `timeout` ns.
    func isStalled(now: UInt64, after timeout: UInt64) -> Bool {
        !sendDone && queuedBytes > 0 && now >= lastSendProgress && now - lastSendProgress >= timeout
    }

    /// The peer granted `increment` more bytes.
    func peerWindow(_ increment: UInt64) throws {
        guard increment <= VarInt.max - sendCredit else {
            throw MuxViolation(.flowControl, "stream \(id) window beyond 2^62")
        }
        sendCredit += increment
        link.schedule(self)
    }

    /// Drops whatever is queued and sends RESET with `code`.
    private func abandonSending(code: UInt64) {
        guard !sendDone else { return }
        resetSent = true
        queue.forEach { $0.deallocate() }
        queue.removeAll()
        queueHead = 0
        queuedBytes = 0
        link.queueControl(.reset, stream: id, value: code)
    }

    // MARK: loop side, receiving

    /// A DATA record of `length` bytes starts: check it against the window.
    func dataStarts(length: Int) throws {
        guard !receiveDone else {
            throw MuxViolation("DATA on stream \(id) after its \(finReceived ? "FIN" : "RESET")")
        }
        guard receivedOffset + UInt64(length) <= receiveLimit else {
            throw MuxViolation(.flowControl, "stream \(id) got \(receivedOffset + UInt64(length)) bytes, window \(receiveLimit)")
        }
        receivedOffset += UInt64(length)
    }

    /// Queues bytes from the peer. A waiting reader is woken once per read
    /// batch (`wakeReader`), not once per record.
    func deliver(_ data: UnsafeRawBufferPointer) {
        if discarding {
            // Nobody will read them: give their credit back at once.
            connection.returnDiscarded(data.count)
            return
        }
        let readerWaiting = mailbox.withLock { m -> Bool in
            m.append(data, chunk: Self.receiveChunk)
            return m.readWaiter != nil
        }
        if readerWaiting && !wakePending {
            wakePending = true
            connection.endpoint.wakeLater(self)
        }
    }

    func peerFin() throws {
        guard !receiveDone else { throw MuxViolation("FIN on stream \(id) after its end") }
        finReceived = true
        let readerWaiting = mailbox.withLock { m -> Bool in
            m.finReceived = true
            return m.readWaiter != nil
        }
        if readerWaiting && !wakePending {
            wakePending = true
            connection.endpoint.wakeLater(self)
        }
    }

    func peerReset(code: UInt64) {
        guard !receiveDone else { return }
        resetReceived = true
        failReceive(.streamReset(errorCode: code))
    }

    /// The peer reads no more: stop sending, as QUIC does on STOP_SENDING.
    func peerStopSending(code: UInt64) {
        guard !sendDone else { return }
        abandonSending(code: code)
        failSend(.streamReset(errorCode: code))
    }

    /// Hands what arrived to a waiting reader (loop thread).
    func wakeReader() {
        wakePending = false
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
        guard n > 0 else { return }
        if !receiveDone && !removed && !connection.isClosed {
            receiveLimit += UInt64(n)
            link.queueControl(.streamWindow, stream: id, value: UInt64(n))
        }
        connection.consumed(n)
    }

    // MARK: local resets

    /// `reset(errorCode:)`: abandon both directions.
    func resetLocally(code: UInt64) {
        guard !removed, !connection.isClosed else { return }
        abandonSending(code: code)
        stopReceiving(code: code)
        fail(.streamReset(errorCode: code))
        connection.streamMayBeDone(self)
    }

    /// The loop found this stream stalled: reset it, freeing its buffers.
    func resetForStall(seconds: Double) {
        guard !removed, !connection.isClosed else { return }
        let code = ProtocolErrorCode.peerStalled.rawValue
        abandonSending(code: code)
        stopReceiving(code: code)
        fail(.peerStalled(seconds: seconds))
        connection.streamMayBeDone(self)
    }

    /// `stopReading(errorCode:)`: ask the peer to stop; what we wrote still goes.
    func stopReadingLocally(code: UInt64) {
        guard !removed, !connection.isClosed else { return }
        stopReceiving(code: code)
        failReceive(.streamReset(errorCode: code))
    }

    private func stopReceiving(code: UInt64) {
        guard !receiveDone, !discarding else { return }
        discarding = true
        link.queueControl(.stopSending, stream: id, value: code)
        discardReceived()
    }

    /// This side reset the stream or stopped reading it: nobody will read
    /// what is buffered. Drops it and gives the connection its credit back;
    /// otherwise every such stream's unread bytes would shrink the
    /// connection's window for good, until no stream could send.
    private func discardReceived() {
        let (dropped, taken) = mailbox.withLock { m -> (Int, Int) in
            defer {
                m.received.removeAll()
                m.receivedHead = 0
                m.buffered = 0
                m.unreportedCredit = 0
            }
            return (m.buffered, m.unreportedCredit)
        }
        if taken > 0 { connection.consumed(taken) }
        if dropped > 0 { connection.returnDiscarded(dropped) }
    }

    // MARK: endings

    func failSend(_ error: TransportError) {
        let (waiters, freed) = mailbox.withLock { m -> ([CheckedContinuation<Void, any Error>], Int) in
            if m.sendError == nil { m.sendError = error }
            // Nothing more will be framed: free it all now (the queue goes
            // with the stream, or at once in `fail`).
            let freed = Int(m.written - m.handedOff)
            m.handedOff = m.written
            defer { m.writeWaiters.removeAll(); m.writeWaitingFor = 0 }
            return (m.writeWaiters, freed)
        }
        budget.release(freed)
        waiters.forEach { $0.resume(throwing: error) }
    }

    func failReceive(_ error: TransportError) {
        let waiter = mailbox.withLock { m -> CheckedContinuation<[UInt8]?, any Error>? in
            if m.receiveError == nil { m.receiveError = error }
            // Bytes already here and a FIN still reach the reader first.
            guard m.buffered == 0, !m.finReceived, let w = m.readWaiter else { return nil }
            m.readWaiter = nil
            return w.continuation
        }
        waiter?.resume(throwing: error)
    }

    /// Ends both directions with `error`, waking everyone waiting.
    func fail(_ error: TransportError) {
        failSend(error)
        failReceive(error)
        queue.forEach { $0.deallocate() }
        queue.removeAll()
        queueHead = 0
        queuedBytes = 0
        let leftovers = mailbox.withLock { m -> [UnsafeMutableRawBufferPointer] in
            defer { m.outgoing.removeAll() }
            return m.outgoing
        }
        leftovers.forEach { $0.deallocate() }
    }
}

/// A unique key for one wait on the memory budget.
private final class TCPWaitToken: Sendable {}
