import MemReplicaSystem
import MemReplicaTransportCore
/// A stream of the TCP transport as user code sees it.
///
/// `write` copies the bytes into transport-owned memory and suspends while
/// more than `TCPConfiguration.streamSendBuffer` bytes wait to be framed.
/// `read` returns bytes in order and gives the peer credit for what was
/// read, so a slow reader slows its sender, never memory, and never the
/// other streams sharing its TCP connection.
public final class TCPStream: TransportStream, @unchecked Sendable {
    let core: TCPStreamCore
    public var id: Int64 { core.id }

    init(core: TCPStreamCore) { self.core = core }

    public var frameAllowance: FrameAllowance? { core.connection.frameAllowance }

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
