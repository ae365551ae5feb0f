import MemReplicaSystem
import MemReplicaTransportCore

/// The exporter's side of one pass spread over lanes: its region stream
/// and the lane streams the mirror opened for it, each naming the pass's
/// token in LANE (docs/PROTOCOL.md §5 item 3). Lanes join as they arrive;
/// each chunk goes on the stream with the fewest unsettled bytes, so a lane
/// held up by a lost packet takes no more until it moves. At the end of the
/// pass every lane is finished before SYNCED (the initial pass) or
/// LANES_END goes on the region stream.
final class PassLanes: Sendable {
    let token: [UInt8]
    /// Streams asked for, the region stream included.
    let count: Int
    /// Only the subscriber's own connection may join: the same certificate.
    let fingerprint: String
    private let main: FrameStream

    private struct State {
        var joined: [Int: FrameStream] = [:]
        /// Lane indices that arrived, joined or after the pass was over.
        var arrived = Set<Int>()
        /// The pass ended (or failed): a lane joining now is finished at once.
        var closed = false
    }
    private let state = Locked(State())

    init(count: Int, main: FrameStream, fingerprint: String) {
        var generator = SystemRandomNumberGenerator()
        token = (0..<FrameLimits.laneTokenBytes).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        self.count = count
        self.main = main
        self.fingerprint = fingerprint
    }

    enum Joining { case joined, passOver, refused }

    /// Adds lane `index`: `passOver` when the pass was sent already (the
    /// lane has nothing to carry), `refused` for an index LANES did not ask
    /// for or one that arrived already. `allArrived`: every lane LANES
    /// asked for has now come.
    func join(_ lane: FrameStream, index: Int) -> (Joining, allArrived: Bool) {
        state.withLock { s in
            guard index >= 1, index < count, s.arrived.insert(index).inserted else { return (.refused, false) }
            let all = s.arrived.count == count - 1
            guard !s.closed else { return (.passOver, all) }
            s.joined[index] = lane
            return (.joined, all)
        }
    }

    /// Every lane LANES asked for has come (joined or after the pass).
    var allArrived: Bool { state.withLock { $0.arrived.count == count - 1 } }

    /// The stream for the pass's next frame: of the region stream and the
    /// joined lanes, the one with the fewest bytes not yet settled.
    func next() -> FrameStream {
        let lanes = state.withLock { Array($0.joined.values) }
        var best = main
        var least = main.stream.unsettledSendBytes
        for lane in lanes {
            let unsettled = lane.stream.unsettledSendBytes
            if unsettled < least {
                best = lane
                least = unsettled
            }
        }
        return best
    }

    /// The pass was sent: finishes every lane (its frames are all queued
    /// ahead of the FIN), so the mirror knows when it has them all.
    /// Returns how many streams the pass went over, the region stream included.
    func finish() async throws -> Int {
        let lanes = close()
        for lane in lanes { try await lane.stream.finish() }
        return lanes.count + 1
    }

    /// The subscription ended early: resets every lane with `code`.
    func abandon(code: ProtocolErrorCode) async {
        let lanes = close()
        for lane in lanes { await lane.stream.reset(errorCode: code.rawValue) }
    }

    /// The joined lanes, the first time only.
    private func close() -> [FrameStream] {
        state.withLock { s in
            guard !s.closed else { return [] }
            s.closed = true
            return Array(s.joined.values)
        }
    }
}
