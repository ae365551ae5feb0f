import MemReplicaSystem
import MemReplicaTransportCore
import DequeModule

/// One stream of a TCP transport connection, in two parts as in
/// `QUICStreamCore`: the loop-only part (send queue, offsets, credit) is
/// touched only on the endpoint's loop thread; the `state`
/// (`StreamCoreState`) is shared with the tasks that read and write.
///
/// Flow control is the mux's own: the receiver grants each stream a window
/// (SETTINGS, then WINDOW records as its reader takes bytes), so a slow
/// reader stops its sender, never the TCP connection or memory. `write`
/// suspends while more than `streamSendBuffer` bytes wait to be framed.
final class TCPStreamCore: StreamCore, SendScheduled, @unchecked Sendable {
    let state: StreamCoreState
    /// Strong: a stream handle may outlive its connection's tables and must
    /// still answer (with the connection's error).
    let connection: TCPConnectionCore
    /// The TCP connection this stream's records travel on.
    let link: TCPLink
    var mailbox: Locked<StreamMailbox> { state.mailbox }
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
        self.connection = connection
        self.link = link
        self.sendCredit = sendCredit
        receiveLimit = connection.streamReceiveWindow
        state = StreamCoreState(id: id, shared: connection.shared,
                                sendLimit: connection.endpoint.configuration.streamSendBuffer,
                                streamReceiveWindow: connection.streamReceiveWindow,
                                connectionReceiveWindow: connection.receiveWindow)
    }

    deinit {
        // What the state's deinit gives back to the budget; the memory is here.
        queue.forEach { $0.deallocate() }
    }

    // MARK: StreamCore

    package var frameAllowance: FrameAllowance? { connection.frameAllowance }

    func postToLoop(_ body: @escaping @Sendable () -> Void) { connection.endpoint.post(body) }

    func returnConnectionCredit() { connection.returnAllCredit() }

    /// Only the framing order changes: what is already in the kernel's send
    /// buffer goes first regardless (TCP's head-of-line cost).
    func prioritizeLocally() { link.makeUrgent(self) }

    /// The kernel's pacing rate for this stream's TCP connection, else its
    /// window over the smoothed RTT.
    func sendRateNow() -> Double? {
        guard let info = link.currentInfo else { return nil }
        if info.pacingRate > 0, info.pacingRate != UInt64.max { return Double(info.pacingRate) }
        guard info.rttMicroseconds > 0, info.cwndSegments > 0 else { return nil }
        return Double(info.cwndSegments * info.mss) / (Double(info.rttMicroseconds) / 1e6)
    }

    // MARK: loop side, sending

    /// Moves what tasks wrote into the send queue and schedules sending.
    func drainMailbox() {
        let (chunks, fin) = state.takeOutgoing()
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
                        state.budget.copies.give(chunk)
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
        connection.lastSendProgress = lastSendProgress
        state.settle(count)
    }

    /// Holds bytes not yet handed to TLS, with no progress for `timeout` ns,
    /// while the peer holds it back: its credit is spent, or the
    /// connection's is and the peer took nothing on any stream for as
    /// long. A stream waiting its turn behind the connection's others is
    /// not stalled, and its clock starts again.
    func isStalled(now: UInt64, after timeout: UInt64) -> Bool {
        guard !sendDone && queuedBytes > 0 else { return false }
        let last = connection.lastSendProgress
        let connectionHeld = connection.creditLeft(for: self) == 0 && now >= last && now - last >= timeout
        if streamCreditLeft > 0 && !connectionHeld {
            lastSendProgress = max(lastSendProgress, now)
            return false
        }
        return now >= lastSendProgress && now - lastSendProgress >= timeout
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
        if state.receive(data, fin: false) && !wakePending {
            wakePending = true
            connection.endpoint.wakeLater(self)
        }
    }

    func peerFin() throws {
        guard !receiveDone else { throw MuxViolation("FIN on stream \(id) after its end") }
        finReceived = true
        if state.receive(UnsafeRawBufferPointer(start: nil, count: 0), fin: true) && !wakePending {
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
        wakeWaitingReader()
    }

    /// Opens the windows by what readers took since the last time.
    func returnCredit() {
        let n = state.takeUnreportedCredit()
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
        let (dropped, taken) = state.discardReceived()
        if taken > 0 { connection.consumed(taken) }
        if dropped > 0 { connection.returnDiscarded(dropped) }
    }

    // MARK: endings

    /// Nothing more will be framed: free it all now (the queue goes with
    /// the stream, or at once in `fail`).
    func failSend(_ error: TransportError) { state.settleAll(failing: error) }

    func failReceive(_ error: TransportError) { state.failReceive(error) }

    /// Ends both directions with `error`, waking everyone waiting.
    func fail(_ error: TransportError) {
        failSend(error)
        failReceive(error)
        queue.forEach { $0.deallocate() }
        queue.removeAll()
        queueHead = 0
        queuedBytes = 0
        state.dropOutgoing()
    }
}
