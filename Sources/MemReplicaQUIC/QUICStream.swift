import MemReplicaSystem
import MemReplicaTransportCore

/// A bidirectional QUIC stream as user code sees it.
///
/// `write` copies the bytes into transport-owned memory and suspends while
/// more than `QUICConfiguration.streamSendBuffer` bytes are unacknowledged.
/// `read` returns bytes in order and gives the peer flow-control credit for
/// what was read, so a slow reader slows the sender, never memory.
public final class QUICStream: TransportStream, @unchecked Sendable {
    package let core: QUICStreamCore
    public var id: Int64 { core.id }

    init(core: QUICStreamCore) { self.core = core }

    public var frameAllowance: FrameAllowance? { core.connection.frameAllowance }

    /// Some bytes read from this stream arrived as 0-RTT early data, which
    /// an attacker can replay: act on them only if doing so twice is harmless.
    public var receivedEarlyData: Bool { core.receivedEarlyData }

    public func write(_ bytes: [UInt8]) async throws { try await core.write(bytes) }
    public func write(_ bytes: UnsafeRawBufferPointer) async throws { try await core.write(bytes) }
    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer) async throws {
        try await core.write(header, followedBy: body)
    }
    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer,
                      checkingCopy check: () throws -> Void) async throws {
        try await core.write(header, followedBy: body, checkingCopy: check)
    }
    public func finish() async throws { try core.finish() }
    public func read(maxLength: Int = 1 << 20) async throws -> [UInt8]? { try await core.read(maxLength: maxLength) }

    public func prioritize() async { await core.prioritize() }
    public func stopReading(errorCode: UInt64) async { await core.stopReading(errorCode: errorCode) }
    public func reset(errorCode: UInt64) async { await core.reset(errorCode: errorCode) }
}
