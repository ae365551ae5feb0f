import MemReplicaSystem

/// A stream as user code sees it, the same for every transport: each call
/// goes to the transport's stream core (`StreamCore`), whose rules are
/// shared too. `QUICStream` and `TCPStream` add only what their transport
/// has; nothing outside this package can make one (the initializer is
/// package-only), so `open` here only lets those two subclass it.
///
/// `write` copies the bytes into transport-owned memory and suspends while
/// more than the configuration's `streamSendBuffer` bytes are unsettled
/// (QUIC: unacknowledged; TCP: not yet framed). `read` returns bytes in
/// order and gives the peer credit for what was read, so a slow reader
/// slows its sender, never memory.
open class StreamHandle: TransportStream, @unchecked Sendable {
    package let streamCore: any StreamCore

    package init(streamCore: any StreamCore) { self.streamCore = streamCore }

    public var id: Int64 { streamCore.id }
    public var frameAllowance: FrameAllowance? { streamCore.frameAllowance }

    /// Some bytes read from this stream arrived as 0-RTT early data (QUIC
    /// only), which an attacker can replay: act on them only if doing so
    /// twice is harmless.
    public var receivedEarlyData: Bool { streamCore.state.receivedEarlyData }
    public var unsettledSendBytes: Int { streamCore.state.mailbox.withLock { $0.unsettled + $0.reserved } }
    public func sendRate() async -> Double? {
        let core = streamCore
        return await core.onLoop { core.sendRateNow() }
    }

    public func write(_ bytes: [UInt8]) async throws { try await streamCore.write(bytes) }
    public func write(_ bytes: UnsafeRawBufferPointer) async throws { try await streamCore.write(bytes) }
    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer) async throws {
        try await streamCore.write(header, followedBy: body)
    }
    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer,
                      checkingCopy check: () throws -> Void) async throws {
        try await streamCore.write(header, followedBy: body, checkingCopy: check)
    }
    public func finish() async throws { try streamCore.finish() }
    public func read(maxLength: Int = 1 << 20) async throws -> [UInt8]? {
        try await streamCore.read(maxLength: maxLength)
    }

    public func prioritize() async { await streamCore.prioritize() }
    public func stopReading(errorCode: UInt64) async { await streamCore.stopReading(errorCode: errorCode) }
    public func reset(errorCode: UInt64) async { await streamCore.reset(errorCode: errorCode) }
}
