import DequeModule

/// A stream as a send scheduler sees it: whether it waits in the queue,
/// and whether it is urgent (`TransportStream.prioritize`).
package protocol SendScheduled: AnyObject {
    var urgent: Bool { get set }
    var scheduled: Bool { get set }
}

/// The round-robin queue of a connection's (QUIC) or TCP link's streams
/// with bytes to send, one turn (a packet, a DATA record) at a time.
///
/// Urgent streams go behind the urgent ones already queued but ahead of
/// the rest, so a small answer never waits for a bulk stream's turn. But
/// not only urgent ones: with a small congestion window (a lossy path) or
/// a slow link, steady reads could take every turn and stall the bulk
/// streams for as long as they last. So a waiting bulk stream gets every
/// fifth turn: bulk keeps at least a fifth of the connection.
///
/// The queue holds existentials, not `Stream`s: this module's code is not
/// specialized for the transports' stream types (the compiler does not
/// inline `package` declarations across modules), and a `Deque<Stream>`
/// operated on generically looked up its metadata on every packet. The
/// generic surface only casts back.
package struct SendScheduler<Stream: SendScheduled> {
    private var queue = Deque<any SendScheduled>()
    /// Turns in a row that urgent streams took.
    private var urgentTurnsInARow = 0
    /// Turns urgent streams may take in a row while a bulk stream waits.
    package static var urgentTurnsBeforeBulk: Int { 4 }

    package init() {}

    package var isEmpty: Bool { queue.isEmpty }

    /// Queues `stream` (not queued yet) behind the others of its kind.
    package mutating func schedule(_ stream: Stream) {
        stream.scheduled = true
        enqueue(stream)
    }

    private mutating func enqueue(_ stream: any SendScheduled) {
        guard stream.urgent else { return queue.append(stream) }
        queue.insert(stream, at: queue.firstIndex { !$0.urgent } ?? queue.endIndex)
    }

    private func index(of stream: any SendScheduled) -> Int? {
        queue.firstIndex { $0 === stream }
    }

    /// Makes `stream` urgent, moving it forward if it is already queued.
    package mutating func makeUrgent(_ stream: Stream) {
        guard !stream.urgent else { return }
        stream.urgent = true
        guard stream.scheduled, let i = index(of: stream) else { return }
        queue.remove(at: i)
        enqueue(stream)
    }

    /// The stream whose turn it is, left in the queue: the first, unless
    /// urgent streams took their turns in a row and a `ready` bulk stream
    /// waits. Streams at the front that are not `ready` leave the queue.
    package mutating func next(ready: (Stream) -> Bool) -> Stream? {
        while let head = queue.first {
            if ready(Self.cast(head)) { break }
            head.scheduled = false
            queue.removeFirst()
        }
        guard let head = queue.first else { return nil }
        if head.urgent, urgentTurnsInARow >= Self.urgentTurnsBeforeBulk,
           let bulk = queue.first(where: { !$0.urgent && ready(Self.cast($0)) }) {
            return Self.cast(bulk)
        }
        return Self.cast(head)
    }

    /// The urgent stream whose turn it is, leaving every bulk stream queued
    /// (urgent streams are the queue's front): for when the connection's
    /// credit is down to what is kept for them (`urgentCreditReserve`).
    /// Urgent streams at the front that are not `ready` leave the queue.
    package mutating func nextUrgent(ready: (Stream) -> Bool) -> Stream? {
        while let head = queue.first, head.urgent {
            if ready(Self.cast(head)) { return Self.cast(head) }
            head.scheduled = false
            queue.removeFirst()
        }
        return nil
    }

    /// The connection credit bulk streams leave to urgent ones, for a peer
    /// whose connection window is `peerWindow`: 1/8 of it, at most 1 MiB
    /// (sixteen 64 KiB fault answers). Bulk stops writing at it, so an
    /// answer someone waits on never waits for the peer to read bulk bytes:
    /// on a lossy path the window fills with a bulk's bytes held behind
    /// lost packets, and an answer sent behind them arrived a round trip
    /// or more late (bench/RESULTS.md, WAN efficiency).
    package static func urgentCreditReserve(peerWindow: UInt64) -> UInt64 {
        min(peerWindow / 8, 1 << 20)
    }

    /// `stream` (from `next`) took a turn: what counts toward bulk's share.
    package mutating func tookTurn(_ stream: Stream) {
        urgentTurnsInARow = stream.urgent ? urgentTurnsInARow + 1 : 0
    }

    /// `stream` took its turn and has more to send: it goes behind the
    /// others of its kind, so the next turn serves the next one.
    package mutating func rotate(_ stream: Stream) {
        if let first = queue.first, first === stream, queue.count > 1 {
            queue.removeFirst()
            enqueue(stream)
        } else if !stream.urgent, let i = index(of: stream), i > 0 {
            // A bulk stream served out of turn goes to the back of the bulk ones.
            queue.remove(at: i)
            queue.append(stream)
        }
    }

    /// Takes `stream` out of the queue (nothing to send, or blocked).
    package mutating func remove(_ stream: Stream) {
        if let i = index(of: stream) { queue.remove(at: i) }
        stream.scheduled = false
    }

    /// Empties the queue (the connection or link is ending).
    package mutating func removeAll() {
        for s in queue { s.scheduled = false }
        queue.removeAll()
    }

    /// Every queued stream is a `Stream`: only `schedule` and `makeUrgent` add.
    private static func cast(_ stream: any SendScheduled) -> Stream {
        unsafeDowncast(stream, to: Stream.self)
    }
}
