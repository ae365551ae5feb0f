import MemReplicaSystem
import MemReplicaTransportCore
/// Handles a stream's received bytes on the endpoint's loop thread, where an
/// answer can be queued and sent in the same loop turn. A request/response
/// exchange through a task crosses threads four times (loop → reader task →
/// loop, on each side); each crossing is a wake-up costing tens of µs on a
/// VM, far more than the work. Post-copy fault reads use this.
///
/// Everything a reader does runs on the loop: it must not block, and it
/// owns no thread of its own. Sendable only to be handed to the loop; it is
/// touched there alone.
protocol LoopStreamReader: AnyObject, Sendable {
    /// Bytes arrived (take them with `takeOnLoop`), the stream ended
    /// (`receivedAllOnLoop`), or send room freed up after `waitForSendRoom`.
    /// The reader ends itself with `endLoopReading`.
    func streamReadable(_ stream: QUICStreamCore)
}

/// Frames on the loop thread: decodes what arrives and hands each frame to
/// `handle`, which may answer through `sendOnLoop`. Ends cleanly at a FIN
/// between frames; a frame the codec refuses, or an error `handle` throws,
/// ends it with that error (the waiting task reports it, e.g. with an
/// ERROR frame, as the task path does).
///
/// Answers wait for the peer's ACKs like a task's writes: while more than
/// the stream's send buffer is unacknowledged nothing more is read, and
/// unread requests stay in the stream's receive window. A handler that
/// stops mid-answer for that reason (`stream.sendBacklogged`) returns the
/// rest of its work as a frame, handled again once there is room.
final class LoopFrameReader: LoopStreamReader, @unchecked Sendable {
    private var decoder = FrameDecoder()
    private var unfinished: Frame?
    private let handle: (Frame, QUICStreamCore) throws -> Frame?
    /// Bytes read per turn: a bound on the work done before the loop gets
    /// back to its socket.
    private static let batch = 64 << 10

    /// `leftover`: bytes a task's `FrameStream` had read but not decoded.
    init(leftover: [UInt8], handle: @escaping (Frame, QUICStreamCore) throws -> Frame?) {
        decoder.append(leftover)
        self.handle = handle
    }

    func streamReadable(_ stream: QUICStreamCore) {
        do {
            while true {
                if stream.sendBacklogged {
                    stream.waitForSendRoom()
                    return
                }
                if let frame = try unfinished ?? decoder.next() {
                    unfinished = try handle(frame, stream)
                    continue
                }
                guard let bytes = stream.takeOnLoop(maxLength: Self.batch) else { break }
                decoder.append(bytes)
            }
            guard stream.receivedAllOnLoop else { return }
            guard decoder.atFrameBoundary else {
                throw ProtocolViolation(.malformedFrame, "stream ended inside a frame (\(decoder.pendingBytes) bytes)")
            }
            stream.endLoopReading(nil)
        } catch {
            stream.endLoopReading(error)
        }
    }
}

extension QUICStream {
    /// Hands this stream's reading to `reader` on the loop thread and waits
    /// until it ends: returns at a clean end, throws the reader's error or
    /// the stream's. A reset of the stream (`reset`) ends the wait too.
    func readOnLoop(_ reader: any LoopStreamReader) async throws {
        let core = self.core
        try await Delivery<Void>.wait { done in
            core.connection.endpoint.post { core.startLoopReading(reader, done: done) }
        }
    }
}
