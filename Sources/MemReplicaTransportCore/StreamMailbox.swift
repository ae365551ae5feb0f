/// The part of a stream shared between its endpoint's loop thread and the
/// tasks that read and write it, always under the stream's lock
/// (`StreamCoreState.mailbox`). Written bytes wait here until the loop
/// takes them; received bytes wait here until a reader takes them.
package struct StreamMailbox {
    // Written by tasks, drained by the loop.
    package var outgoing: [UnsafeMutableRawBufferPointer] = []
    package var finRequested = false
    /// A drain command is queued on the loop already.
    package var drainPosted = false
    package var written: UInt64 = 0
    /// Bytes the transport is done with, whose budget is given back: QUIC,
    /// acknowledged by the peer; TCP, framed and handed to TLS.
    package var settled: UInt64 = 0
    /// Bytes writers reserved in the memory budget and are copying now.
    package var reserved = 0
    package var writeWaiters: [CheckedContinuation<Void, any Error>] = []
    /// The largest write a waiter wants room for.
    package var writeWaitingFor = 0
    package var sendError: TransportError?

    // Delivered by the loop, taken by tasks.
    package var received = ReceiveBuffer()
    package var finReceived = false
    /// Some of the bytes came in 0-RTT packets (replayable; QUIC only).
    package var receivedEarlyData = false
    package var receiveError: TransportError?
    package var readWaiter: (maxLength: Int, continuation: CheckedContinuation<[UInt8]?, any Error>)?
    /// Bytes read but not yet returned to the peer as credit.
    package var unreportedCredit = 0
    package var creditPosted = false
    /// The connection forgot this stream: the periodic sweep no longer
    /// returns its credit, so every read does.
    package var forgotten = false

    package init() {}

    /// Bytes written and not settled yet.
    package var unsettled: Int { Int(written - settled) }

    /// Whether a write of `count` bytes fits under `limit` now (a larger
    /// one goes alone, into an empty buffer).
    package func hasSendRoom(for count: Int, limit: Int) -> Bool {
        let pending = written - settled + UInt64(reserved)
        return pending == 0 || pending + UInt64(count) <= UInt64(limit)
    }

    /// Up to maxLength received bytes; what is taken becomes credit to return.
    package mutating func take(maxLength: Int) -> [UInt8]? {
        guard let out = received.take(maxLength: maxLength) else { return nil }
        unreportedCredit += out.count
        return out
    }

    /// The waiting writers, leaving none.
    package mutating func takeWriteWaiters() -> [CheckedContinuation<Void, any Error>] {
        defer { writeWaiters.removeAll(); writeWaitingFor = 0 }
        return writeWaiters
    }
}
