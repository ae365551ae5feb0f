import Logging

/// What a peer does with a stream until the replication protocol exists:
/// sends back exactly what it received. `memreplica ping` uses it to prove
/// the whole path (mTLS, streams, flow control) end to end.
public struct DiagnosticEcho: Sendable {
    /// A stream may carry at most this much; the echo is buffered whole so a
    /// client that writes everything before reading cannot deadlock it.
    public static let limit = 64 << 20
    /// Application error code for a stream reset because it exceeded `limit`.
    public static let tooLargeErrorCode: UInt64 = 0x4d52_0001

    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func serve(_ stream: any TransportStream, peer: String) async {
        do {
            let bytes = try await stream.readAll(limit: Self.limit)
            if !bytes.isEmpty { try await stream.write(bytes) }
            try await stream.finish()
            logger.trace("echoed stream", metadata: ["peer": "\(peer)", "stream": "\(stream.id)", "bytes": "\(bytes.count)"])
        } catch TransportError.messageTooLarge(let limit) {
            logger.warning("reset echo stream over the size limit",
                           metadata: ["peer": "\(peer)", "stream": "\(stream.id)", "limit": "\(limit)"])
            await stream.reset(errorCode: Self.tooLargeErrorCode)
        } catch {
            logger.debug("echo stream ended early: \(error)", metadata: ["peer": "\(peer)", "stream": "\(stream.id)"])
        }
    }
}
