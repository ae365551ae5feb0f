import MemReplicaTransportCore
import DequeModule

/// The part of a TCP stream shared between its loop thread and the tasks
/// that read and write it, always under the stream's lock. Written bytes
/// wait here until the loop takes them; received bytes wait here until a
/// reader takes them.
struct TCPStreamMailbox {
    // Written by tasks, drained by the loop.
    var outgoing: [UnsafeMutableRawBufferPointer] = []
    var finRequested = false
    /// A drain command is queued on the loop already.
    var drainPosted = false
    var written: UInt64 = 0
    /// Bytes the loop has framed into records and handed to TLS.
    var handedOff: UInt64 = 0
    /// Bytes writers reserved in the memory budget and are copying now.
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
    var receiveError: TransportError?
    var readWaiter: (maxLength: Int, continuation: CheckedContinuation<[UInt8]?, any Error>)?
    /// Bytes read but not yet returned to the peer as credit.
    var unreportedCredit = 0
    var creditPosted = false
    /// The connection forgot this stream: the periodic sweep no longer
    /// returns its credit, so every read does.
    var forgotten = false

    /// Whether a write of `count` bytes fits under `limit` now (a larger
    /// one goes alone, into an empty buffer).
    func hasSendRoom(for count: Int, limit: Int) -> Bool {
        let pending = written - handedOff + UInt64(reserved)
        return pending == 0 || pending + UInt64(count) <= UInt64(limit)
    }

    /// Up to maxLength buffered bytes, oldest first.
    mutating func take(maxLength: Int) -> [UInt8]? {
        guard buffered > 0, maxLength > 0 else { return nil }
        var out: [UInt8]
        let first = received[0]
        if receivedHead == 0 && first.count <= maxLength {
            out = first
            received.removeFirst()
            // Coalesce small chunks so one read returns what is there; a big
            // chunk is enough on its own and copying it costs.
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

    /// Appends received bytes; they land in the newest chunk while it has
    /// room, so a bulk transfer allocates per `chunk` bytes, not per record.
    mutating func append(_ data: UnsafeRawBufferPointer, chunk: Int) {
        guard data.count > 0 else { return }
        let last = received.count - 1
        if last >= 0, received[last].count + data.count <= chunk {
            received[last].append(contentsOf: data)
        } else {
            var bytes = [UInt8]()
            bytes.reserveCapacity(max(data.count, chunk))
            bytes.append(contentsOf: data)
            received.append(bytes)
        }
        buffered += data.count
    }
}
