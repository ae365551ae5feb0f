import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore

/// One QUIC stream's state, in two parts. The loop-only part (send buffer,
/// offsets, scheduling) is touched only on the endpoint's loop thread. The
/// `state` (`StreamCoreState`) is shared with the tasks that read and
/// write, under its lock; its rules are the TCP transport's too.
package final class QUICStreamCore: StreamCore, SendScheduled, @unchecked Sendable {
    package let state: StreamCoreState
    /// Strong: a stream handle may outlive its connection's entry in the
    /// endpoint and must still answer (with the connection's error).
    package let connection: QUICConnectionCore
    var mailbox: Locked<StreamMailbox> { state.mailbox }
    /// Charged for the bytes this stream holds written and not yet
    /// acknowledged (received bytes live in the connection's reserved window).
    var budget: ConnectionSendShare { state.budget }

    // Loop-only.
    var sendBuffer: SendBuffer
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

    init(id: Int64, connection: QUICConnectionCore) {
        self.connection = connection
        let config = connection.endpoint.configuration
        state = StreamCoreState(id: id, shared: connection.shared, sendLimit: config.streamSendBuffer,
                                streamReceiveWindow: config.streamReceiveWindow,
                                connectionReceiveWindow: config.connectionReceiveWindow)
        sendBuffer = SendBuffer(copies: connection.shared.sendShare.copies)
    }

    var hasDataToSend: Bool {
        !sendClosed && (sendBuffer.unsent > 0 || (finQueued && !finSent))
    }

    // MARK: StreamCore

    package var frameAllowance: FrameAllowance? { connection.frameAllowance }

    package func postToLoop(_ body: @escaping @Sendable () -> Void) { connection.endpoint.post(body) }

    package func returnConnectionCredit() { connection.returnAllCredit() }

    package func prioritizeLocally() { connection.makeUrgent(self) }

    package func sendRateNow() -> Double? { connection.sendRate() }

    package func stopReadingLocally(code: UInt64) { shutDown(code: code, readingOnly: true) }

    package func resetLocally(code: UInt64) { shutDown(code: code, readingOnly: false) }

    /// Stops the reading half (STOP_SENDING) or both (RESET_STREAM too);
    /// nobody will read what is buffered, so it goes and its credit returns.
    private func shutDown(code: UInt64, readingOnly: Bool) {
        guard !connection.isClosed, !closedByStack else { return }
        if readingOnly {
            ngtcp2_conn_shutdown_stream_read(connection.conn, id, code)
            failReceive(.streamReset(errorCode: code))
        } else {
            ngtcp2_conn_shutdown_stream(connection.conn, id, code)
            fail(.streamReset(errorCode: code))
        }
        discardReceived()
        connection.endpoint.needsWrite(connection)
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
    package func drainMailbox() {
        let (chunks, fin) = state.takeOutgoing()
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

    var hasUnsentBytes: Bool { sendBuffer.unsent > 0 }

    /// Ready to send, held back by nothing of the peer's: not stalled.
    func waitingItsTurn(now: UInt64) {
        if sendBuffer.unacknowledged > 0 { lastSendProgress = max(lastSendProgress, now) }
    }

    /// Holds bytes the peer has not acknowledged, with no progress for `timeout` ns.
    func isStalled(now: UInt64, after timeout: UInt64) -> Bool {
        sendBuffer.unacknowledged > 0 && now >= lastSendProgress && now - lastSendProgress >= timeout
    }

    func acknowledged(upTo offset: UInt64) {
        let before = sendBuffer.ackedOffset
        sendBuffer.acknowledge(upTo: offset)
        if sendBuffer.ackedOffset > before {
            lastSendProgress = monotonicNanoseconds()
            connection.lastSendProgress = lastSendProgress
        }
        if loopReaderWantsRoom, !sendBacklogged, !wakePending {
            // Called inside ngtcp2's packet processing: resume the reader
            // once the batch is done, as for bytes that arrive.
            loopReaderWantsRoom = false
            wakePending = true
            connection.endpoint.wakeLater(self)
        }
        state.settle(upTo: sendBuffer.ackedOffset)
    }

    /// Queues bytes from the peer. A waiting reader is woken later, once
    /// per batch of datagrams (`wakeReader`), not once per packet: a wake-up
    /// per 1.4 KB packet cost more than the rest of the receive path.
    func deliver(_ data: UnsafeRawBufferPointer, fin: Bool, early: Bool = false) {
        let readerWaiting = state.receive(data, fin: fin, early: early)
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
        wakeWaitingReader()
    }

    /// Opens the windows by what readers took since the last time.
    package func returnCredit() {
        connection.consumed(state.takeUnreportedCredit(), on: self)
    }

    /// The peer stopped the receiving or sending half.
    func failSend(_ error: TransportError) {
        sendClosed = true
        state.settleAll(failing: error)
    }

    func failReceive(_ error: TransportError) {
        // A loop reader answers requests: what is still buffered has no
        // one to answer to any more.
        endLoopReading(error)
        state.failReceive(error)
    }

    /// This side reset the stream or stopped reading it: nobody will read
    /// what is buffered. Drops it and gives the connection its credit back;
    /// otherwise every such stream's unread bytes would shrink the
    /// connection's window for good, until no stream could send.
    func discardReceived() {
        let (dropped, taken) = state.discardReceived()
        if taken > 0 { connection.consumed(taken, on: self) }
        if dropped > 0 { connection.returnDiscarded(dropped) }
    }

    /// Ends both directions with `error`, waking everyone waiting.
    package func fail(_ error: TransportError) {
        failSend(error)
        failReceive(error)
        sendBuffer.releaseAll()
        state.dropOutgoing()
    }

    /// Both directions ended cleanly: nothing more to send or wait for.
    func finishedCleanly() {
        sendBuffer.releaseAll()
        state.settleAll(failing: nil)
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

    /// Whether the peer finished the stream (every byte has been taken).
    package var receivedAllOnLoop: Bool { state.receivedAll }

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
    package var sendBacklogged: Bool { sendBuffer.unacknowledged > state.sendLimit }

    /// The loop reader waits for acknowledgments before reading on.
    package func waitForSendRoom() { loopReaderWantsRoom = true }

    var finReceived: Bool { state.finReceived }
    var receivedEarlyData: Bool { state.receivedEarlyData }
}
