import QuicShim
import DequeModule
import MemReplicaTransportCore

/// Bytes written to one stream, owned by the transport until the peer
/// acknowledges them: ngtcp2 does not copy stream data, and retransmissions
/// read it again, so nothing here may change or move before the ACK.
struct SendBuffer: ~Copyable {
    private struct Chunk {
        let memory: UnsafeMutableRawBufferPointer
        let start: UInt64
        var end: UInt64 { start + UInt64(memory.count) }
    }

    private var chunks = Deque<Chunk>()
    /// Where acknowledged copies go for reuse.
    private let copies: SendCopyCache
    /// Index in `chunks` of the chunk holding `sentOffset`.
    private var cursor = 0
    private(set) var ackedOffset: UInt64 = 0
    private(set) var sentOffset: UInt64 = 0
    private(set) var writtenOffset: UInt64 = 0

    /// Bytes queued but not yet acknowledged.
    var unacknowledged: Int { Int(writtenOffset - ackedOffset) }
    var unsent: Int { Int(writtenOffset - sentOffset) }

    init(copies: SendCopyCache) {
        self.copies = copies
    }

    /// Takes ownership of memory allocated with `allocate(byteCount:alignment:)`.
    mutating func append(owning memory: UnsafeMutableRawBufferPointer) {
        guard memory.count > 0 else { memory.deallocate(); return }
        chunks.append(Chunk(memory: memory, start: writtenOffset))
        writtenOffset += UInt64(memory.count)
    }

    /// Fills `vecs` with the unsent bytes, oldest first; returns how many.
    func unsentVectors(into vecs: UnsafeMutableBufferPointer<ngtcp2_vec>) -> Int {
        var n = 0
        var i = cursor
        var offset = sentOffset
        while n < vecs.count, i < chunks.count {
            let c = chunks[i]
            let skip = Int(offset - c.start)
            vecs[n] = ngtcp2_vec(base: c.memory.baseAddress!.assumingMemoryBound(to: UInt8.self) + skip,
                                 len: c.memory.count - skip)
            n += 1
            offset = c.end
            i += 1
        }
        return n
    }

    /// Records that ngtcp2 framed `count` more bytes.
    mutating func markSent(_ count: Int) {
        sentOffset += UInt64(count)
        while cursor < chunks.count, chunks[cursor].end <= sentOffset { cursor += 1 }
    }

    /// Records that everything below `offset` is acknowledged; frees it.
    mutating func acknowledge(upTo offset: UInt64) {
        guard offset > ackedOffset else { return }
        ackedOffset = min(offset, sentOffset)
        while let first = chunks.first, first.end <= ackedOffset {
            copies.give(first.memory)
            chunks.removeFirst()
            cursor -= 1
        }
    }

    /// Sends everything unacknowledged again from the start: the server
    /// refused 0-RTT, so ngtcp2 forgot what it framed (and none of it can
    /// have been acknowledged).
    mutating func rewindToAcknowledged() {
        sentOffset = ackedOffset
        cursor = 0
    }

    mutating func releaseAll() {
        for c in chunks { c.memory.deallocate() }
        chunks.removeAll()
        cursor = 0
        ackedOffset = writtenOffset
        sentOffset = writtenOffset
    }

    deinit {
        for c in chunks { c.memory.deallocate() }
    }
}
