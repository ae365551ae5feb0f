import MemReplicaTransportCore
import Logging

/// The diagnostic echo: on a stream that opens with an ECHO frame, every
/// ECHO frame is sent straight back until the peer finishes the stream.
/// `memreplica ping` uses it to prove the whole path (mTLS, streams, flow
/// control, framing) end to end. Frames are bounded by the codec's limits.
public struct DiagnosticEcho: Sendable {
    /// Largest payload one ECHO carries (the frame limit, less its header).
    public static let limit = FrameLimits.maxPayload

    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    /// Serves a stream whose first frame (an ECHO) was already read.
    public func serve(_ frames: FrameStream, first: [UInt8], peer: String) async throws {
        var next: Frame? = .echo(first)
        var echoed = 0
        while let frame = next {
            guard case .echo(let bytes) = frame else {
                throw ProtocolViolation(.unexpectedFrame, "an echo stream carries only ECHO frames")
            }
            try await frames.send(.echo(bytes))
            echoed += bytes.count
            next = try await frames.receive()
        }
        try await frames.stream.finish()
        logger.trace("echoed stream", metadata: ["peer": "\(peer)", "stream": "\(frames.stream.id)", "bytes": "\(echoed)"])
    }
}
