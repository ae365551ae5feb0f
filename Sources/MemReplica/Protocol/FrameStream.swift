import MemReplicaTransportCore
/// Frames over one transport stream: encodes on the way out, decodes with
/// the codec's limits on the way in, and ends the stream with a named code
/// when the peer breaks the protocol.
///
/// A stream a peer opened to us (`init(_:boundedBy:)`) counts what it reads
/// against its connection's `FrameAllowance`: before it reads the rest of a
/// frame larger than `smallFrame` it takes the frame's size, and gives it
/// back when the caller asks for the next frame (or drops this stream), so
/// a handler that holds a request while it cannot answer holds allowed
/// bytes. Frames up to `smallFrame` and the bytes read to find a frame's
/// length are not counted: at most `smallFrame` per stream. Streams we open
/// (a mirror's, to a primary it chose) read freely: waiting readers leave
/// their bytes in the connection's window, so a connection carrying large
/// frames on several streams at once could starve the frame being read of
/// window; a peer only risks that on its own connection to us.
public final class FrameStream: @unchecked Sendable {
    public let stream: any TransportStream
    private var decoder = FrameDecoder()
    private var finished = false
    private let allowance: FrameAllowance?
    /// Bytes taken from the allowance: the frame being assembled, then the
    /// frame last returned, until the next `receive`.
    private var taken = 0

    /// Frames up to this size are read without taking from the allowance;
    /// it is also the most read at once before a frame's length is known.
    public static let smallFrame = 4096

    public init(_ stream: any TransportStream) {
        self.stream = stream
        allowance = nil
    }

    /// A stream a peer opened to us: what its frames hold is bounded by the
    /// connection's allowance (`stream.frameAllowance`).
    public init(_ stream: any TransportStream, boundedBy allowance: FrameAllowance?) {
        self.stream = stream
        self.allowance = allowance
    }

    deinit { allowance?.give(taken) }

    public func send(_ frame: Frame) async throws {
        try await stream.write(try frame.encoded())
    }

    /// A WRITE frame whose bytes are copied once, from `bytes` (a live
    /// mapping) into the transport's send buffer: that copy is the snapshot.
    /// `check`, if given, runs after the copy; a throw drops the frame.
    /// Returns the frame's size on the wire.
    @discardableResult
    public func sendWrite(chunk: UInt64, version: UInt64, bytes: UnsafeRawBufferPointer,
                          checkingCopy check: (() throws -> Void)? = nil) async throws -> Int {
        let header = try Frame.writeHeader(chunk: chunk, version: version, byteCount: bytes.count)
        if let check {
            try await stream.write(header, followedBy: bytes, checkingCopy: check)
        } else {
            try await stream.write(header, followedBy: bytes)
        }
        return header.count + bytes.count
    }

    /// A PAGES frame whose page bytes (`body`) are copied once, into the
    /// transport's send buffer. Returns the frame's size on the wire.
    @discardableResult
    public func sendPages(_ pages: Frame.Pages, body: UnsafeRawBufferPointer) async throws -> Int {
        let header = try Frame.pagesHeader(pages, byteCount: body.count)
        try await stream.write(header, followedBy: body)
        return header.count + body.count
    }

    /// A DATA frame copied once from the live mapping, like `sendWrite`.
    public func sendData(firstChunk: UInt64, bytes: UnsafeRawBufferPointer,
                         checkingCopy check: (() throws -> Void)? = nil) async throws {
        let header = try Frame.dataHeader(firstChunk: firstChunk, byteCount: bytes.count)
        if let check {
            try await stream.write(header, followedBy: bytes, checkingCopy: check)
        } else {
            try await stream.write(header, followedBy: bytes)
        }
    }

    /// The next frame; nil when the peer finished the stream cleanly
    /// between frames. Not safe to call from two tasks at once.
    public func receive() async throws -> Frame? {
        // The caller is done with the frame returned last.
        allowance?.give(taken)
        taken = 0
        while true {
            if let frame = try decoder.next() { return frame }
            if finished { return nil }
            var maxLength = 1 << 20
            if let allowance {
                maxLength = Self.smallFrame
                if let size = decoder.nextFrameSize, size > Self.smallFrame {
                    if taken < size {
                        if !allowance.tryTake(size - taken) { try await allowance.take(size - taken) }
                        taken = size
                    }
                    // Only this frame's bytes: the next one is taken for when its length is known.
                    maxLength = size - decoder.pendingBytes
                }
            }
            guard let bytes = try await stream.read(maxLength: maxLength) else {
                finished = true
                guard decoder.atFrameBoundary else {
                    throw ProtocolViolation(.malformedFrame, "stream ended inside a frame (\(decoder.pendingBytes) bytes)")
                }
                return nil
            }
            decoder.append(bytes)
        }
    }

    /// For a reader that takes over the stream (`LoopFrameReader`): the
    /// bytes read but not yet decoded; nil once the stream has ended, when
    /// there is nothing to take over. This stream must not receive again.
    func handOverReading() -> [UInt8]? {
        allowance?.give(taken)
        taken = 0
        return finished ? nil : decoder.takePending()
    }

    /// Received bytes not yet returned as frames (more may be decodable).
    public var hasBufferedBytes: Bool { !decoder.atFrameBoundary }

    /// How long `fail` waits for the ERROR frame to be taken before it
    /// resets the stream anyway: a peer that reads nothing must not hold
    /// the task (and the stream's buffers) that ends its stream.
    public static let failTimeout: Duration = .seconds(5)

    /// Ends the stream over a violation: tells the peer why in an ERROR
    /// frame, finishes our side and asks the peer to stop sending, both with
    /// the code. A reset instead would let the peer drop the ERROR unread,
    /// so it comes only when the ERROR cannot be queued within `timeout`
    /// (the peer stopped reading), and ends the waiting write.
    public func fail(_ violation: ProtocolViolation, within timeout: Duration = FrameStream.failTimeout) async {
        let code = violation.code.rawValue
        let stream = self.stream
        let error = Frame.error(code: code, message: violation.detail)
        let told = await withTaskGroup(of: Bool?.self) { group -> Bool in
            group.addTask {
                do {
                    try await stream.write(try error.encoded())
                    try await stream.finish()
                    return true
                } catch {
                    return false
                }
            }
            group.addTask {
                // nil: the time ran out (or the ERROR went out first and
                // this timer was cancelled, which nobody reads).
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            if first != true {
                // Failed, or still waiting for room: a reset ends the write.
                await stream.reset(errorCode: code)
            }
            group.cancelAll()
            return first == true
        }
        if told { await stream.stopReading(errorCode: code) }
    }
}
