import DequeModule
import QuicShim

/// One stream's state. Confined to the endpoint's loop thread: every method
/// here runs there (public `QUICStream` handles post commands to it).
final class QUICStreamCore: @unchecked Sendable {
    let id: Int64
    /// Strong: a stream handle may outlive its connection's entry in the
    /// endpoint and must still answer (with the connection's error).
    let connection: QUICConnectionCore

    // Send side.
    var sendBuffer = SendBuffer()
    var finRequested = false
    var finSent = false
    /// In the connection's round-robin queue of streams with data to send.
    var scheduled = false
    /// Waiting for the peer to raise the stream's flow-control limit.
    var flowBlocked = false
    var writeWaiters: [CheckedContinuation<Void, any Error>] = []
    var sendError: TransportError?

    // Receive side.
    private var received = Deque<[UInt8]>()
    private var receivedHead = 0
    private(set) var bufferedBytes = 0
    var finReceived = false
    var receiveError: TransportError?
    var readWaiter: (maxLength: Int, continuation: CheckedContinuation<[UInt8]?, any Error>)?

    /// ngtcp2 has closed the stream (both directions done or reset).
    var closedByStack = false

    init(id: Int64, connection: QUICConnectionCore) {
        self.id = id
        self.connection = connection
    }

    var hasDataToSend: Bool {
        sendError == nil && (sendBuffer.unsent > 0 || (finRequested && !finSent))
    }

    // MARK: receive

    func deliver(_ data: UnsafeRawBufferPointer, fin: Bool) {
        if data.count > 0 {
            received.append(Array(data))
            bufferedBytes += data.count
        }
        if fin { finReceived = true }
        satisfyReader()
    }

    /// Hands queued bytes to a waiting reader, if any.
    func satisfyReader() {
        guard let waiter = readWaiter else { return }
        if let bytes = take(maxLength: waiter.maxLength) {
            readWaiter = nil
            waiter.continuation.resume(returning: bytes)
        } else if finReceived {
            readWaiter = nil
            waiter.continuation.resume(returning: nil)
        } else if let error = receiveError {
            readWaiter = nil
            waiter.continuation.resume(throwing: error)
        }
    }

    /// Removes up to maxLength buffered bytes and returns flow-control credit
    /// for them; nil when nothing is buffered.
    func take(maxLength: Int) -> [UInt8]? {
        guard bufferedBytes > 0, maxLength > 0 else { return nil }
        var out: [UInt8]
        let first = received[0]
        if receivedHead == 0 && first.count <= maxLength {
            out = first
            received.removeFirst()
            // Coalesce small chunks so one read returns what is there.
            while let next = received.first, out.count + next.count <= maxLength {
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
        bufferedBytes -= out.count
        connection.consumed(out.count, on: self)
        return out
    }

    // MARK: send

    func wakeWriters() {
        guard !writeWaiters.isEmpty else { return }
        let limit = connection.endpoint.configuration.streamSendBuffer
        if let error = sendError {
            let waiters = writeWaiters
            writeWaiters.removeAll()
            for w in waiters { w.resume(throwing: error) }
        } else if sendBuffer.unacknowledged <= limit {
            let waiters = writeWaiters
            writeWaiters.removeAll()
            for w in waiters { w.resume() }
        }
    }

    /// Ends both directions with `error`, waking everyone waiting.
    func fail(_ error: TransportError) {
        if sendError == nil { sendError = error }
        if receiveError == nil { receiveError = error }
        sendBuffer.releaseAll()
        wakeWriters()
        satisfyReader()
    }
}
