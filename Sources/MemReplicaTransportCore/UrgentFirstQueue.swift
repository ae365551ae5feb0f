import DequeModule

/// A stream as a send scheduler sees it: whether it waits in the queue,
/// and whether it is urgent (`TransportStream.prioritize`).
package protocol UrgencyScheduled: AnyObject {
    var urgent: Bool { get set }
    var scheduled: Bool { get }
}

/// The round-robin queue of streams with bytes to send, in both transports:
/// urgent streams go behind the urgent ones already queued but ahead of the
/// rest, so a small answer never waits for a bulk stream's turn.
extension Deque where Element: UrgencyScheduled {
    package mutating func enqueue(_ stream: Element) {
        guard stream.urgent else { return append(stream) }
        insert(stream, at: firstIndex { !$0.urgent } ?? endIndex)
    }

    /// Makes `stream` urgent, moving it forward if it is already queued.
    package mutating func makeUrgent(_ stream: Element) {
        guard !stream.urgent else { return }
        stream.urgent = true
        guard stream.scheduled, let i = firstIndex(where: { $0 === stream }) else { return }
        remove(at: i)
        enqueue(stream)
    }
}
