/// The seam between replication logic and the wire. QUIC is the product's
/// transport; TLS over TCP (`TCPEndpoint`, one TCP connection or one per
/// stream) implements the same protocols, so peers can run over either and
/// the benchmark suite can compare them frame for frame.
///
/// Streams are ordered, reliable byte streams. Writes apply backpressure:
/// `write` suspends while the stream's unacknowledged bytes (QUIC), or bytes
/// not yet handed to TLS (TCP), exceed the configured send buffer, so no
/// queue grows without bound.
public protocol Transport: Sendable {
    /// The address this transport's socket is bound to.
    var localAddress: PeerAddress { get }
    /// Our certificate's identity, as peers will see it.
    var localIdentity: PeerIdentity { get }
    /// Connects to a listening peer and completes the mutual TLS handshake.
    func connect(to address: PeerAddress) async throws -> any TransportConnection
    /// Waits for the next authenticated inbound connection; nil once closed.
    func accept() async -> (any TransportConnection)?
    /// Closes every connection and releases the socket.
    func close() async
    /// Identities and RTTs of every established connection.
    func connectionSummaries() async -> [ConnectionSummary]
    /// The budget every stream's send and receive buffers count against.
    var memoryBudget: MemoryBudget { get }
}

public protocol TransportConnection: AnyObject, Sendable {
    /// Who is on the other end, as proven by their certificate.
    var peerIdentity: PeerIdentity { get }
    var remoteAddress: PeerAddress { get }
    /// Opens a bidirectional stream; waits for stream credit if the peer
    /// has none to give right now.
    func openStream() async throws -> any TransportStream
    /// Waits for the peer to open a stream; throws once the connection ends.
    func acceptStream() async throws -> any TransportStream
    func statistics() async -> ConnectionStatistics
    /// Closes with an application error code (0 is a normal close).
    func close(errorCode: UInt64, reason: String) async
    /// Suspends until the connection has ended and returns why.
    func waitClosed() async -> TransportError
}

public protocol TransportStream: AnyObject, Sendable {
    var id: Int64 { get }
    /// Queues bytes for sending. The transport copies and owns them until
    /// the peer acknowledges them.
    func write(_ bytes: [UInt8]) async throws
    func write(_ bytes: UnsafeRawBufferPointer) async throws
    /// Queues a frame header and the bytes that follow it as one write: the
    /// body (region memory) is copied once, into transport-owned memory.
    func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer) async throws
    /// As above, calling `check` once the body is copied and before the
    /// copy is queued: a throw drops the copy (region memory whose backing
    /// failed under it must not be sent, `Region.checkIntact`).
    func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer,
               checkingCopy check: () throws -> Void) async throws
    /// Sends FIN after everything written so far.
    func finish() async throws
    /// Up to `maxLength` bytes in order; nil at the end of the stream.
    func read(maxLength: Int) async throws -> [UInt8]?
    /// Abandons both directions with an application error code.
    func reset(errorCode: UInt64) async
    /// Asks the peer to stop sending (STOP_SENDING with the code); what we
    /// already wrote is still delivered.
    func stopReading(errorCode: UInt64) async
    /// True once any bytes of this stream arrived as 0-RTT early data (which
    /// can be replayed); such bytes must only ask for replay-safe things.
    var receivedEarlyData: Bool { get }
    /// From now on this stream's bytes are sent before those of streams not
    /// so marked (still in order within the stream): for small answers that
    /// someone waits on, such as chunk reads, next to bulk transfers. Only
    /// the sending side's order changes; nothing goes on the wire.
    func prioritize() async
    /// What the readers of this stream's connection may hold of the bytes
    /// they read (`FrameStream` takes from it); nil: unbounded.
    var frameAllowance: FrameAllowance? { get }
    /// Bytes written (or being copied in) and not yet settled (QUIC:
    /// acknowledged; TCP: framed): of several streams to one peer, the one
    /// with the fewest is the one whose bytes get through fastest.
    var unsettledSendBytes: Int { get }
    /// Bytes per second the congestion controller carrying this stream
    /// lets it send now (its pacing rate, else its window over the smoothed
    /// RTT); nil before it has a measure. A sender weighs work that saves
    /// bytes against it (compression pays only while the link is slower).
    func sendRate() async -> Double?
}

extension TransportStream {
    /// Transports without 0-RTT never receive early data.
    public var receivedEarlyData: Bool { false }
    /// Streams outside the peer's transports (test pipes) hold what they read.
    public var frameAllowance: FrameAllowance? { nil }
    /// Streams outside the peer's transports do not say.
    public var unsettledSendBytes: Int { 0 }
    /// Nor do they know their link.
    public func sendRate() async -> Double? { nil }
}

extension TransportStream {
    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer) async throws {
        try await write(header + Array(body))
    }

    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer,
                      checkingCopy check: () throws -> Void) async throws {
        let bytes = header + Array(body)
        try check()
        try await write(bytes)
    }

    /// Reads exactly `count` bytes; throws `truncatedStream` if FIN comes first.
    public func readExactly(_ count: Int) async throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            guard let part = try await read(maxLength: count - out.count) else {
                throw TransportError.truncatedStream(expected: count, received: out.count)
            }
            out.append(contentsOf: part)
        }
        return out
    }

    /// Reads until FIN, refusing more than `limit` bytes.
    public func readAll(limit: Int) async throws -> [UInt8] {
        var out: [UInt8] = []
        while let part = try await read(maxLength: 1 << 20) {
            out.append(contentsOf: part)
            if out.count > limit {
                throw TransportError.messageTooLarge(limit: limit)
            }
        }
        return out
    }
}
