import MemReplicaTransportCore

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
    private let handle: (Frame, any LoopStream) throws -> Frame?
    /// Bytes read per turn: a bound on the work done before the loop gets
    /// back to its socket.
    private static let batch = 64 << 10

    /// `leftover`: bytes a task's `FrameStream` had read but not decoded.
    init(leftover: [UInt8], handle: @escaping (Frame, any LoopStream) throws -> Frame?) {
        decoder.append(leftover)
        self.handle = handle
    }

    func streamReadable(_ stream: any LoopStream) {
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
