import QuicShim
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

    // Each write reserves its bytes in the memory budget (waiting for room)
    // before it copies them: the copy is what the budget counts.
    public func write(_ bytes: [UInt8]) async throws {
        guard !bytes.isEmpty else { return }
        try await core.reserve(bytes.count)
        try core.enqueue(bytes.withUnsafeBytes(OwnedBytes.copy))
    }

    public func write(_ bytes: UnsafeRawBufferPointer) async throws {
        guard bytes.count > 0 else { return }
        try await core.reserve(bytes.count)
        try core.enqueue(OwnedBytes.copy(bytes))
    }

    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer) async throws {
        guard header.count + body.count > 0 else { return }
        try await core.reserve(header.count + body.count)
        try core.enqueue(OwnedBytes.copy(header: header, body: body))
    }

    public func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer,
                      checkingCopy check: () throws -> Void) async throws {
        let count = header.count + body.count
        guard count > 0 else { return }
        try await core.reserve(count)
        let copy = OwnedBytes.copy(header: header, body: body)
        do {
            try check()
        } catch {
            copy.deallocate()
            core.cancelReservation(count)
            throw error
        }
        try core.enqueue(copy)
    }


    public func finish() async throws {
        try core.finish()
    }

    public func read(maxLength: Int = 1 << 20) async throws -> [UInt8]? {
        precondition(maxLength > 0, "maxLength must be positive")
        return try await core.read(maxLength: maxLength)
    }

    public func prioritize() async {
        let core = self.core
        await core.connection.endpoint.onLoop { core.connection.makeUrgent(core) }
    }

    public func stopReading(errorCode: UInt64) async {
        let core = self.core
        await core.connection.endpoint.onLoop {
            let connection = core.connection
            guard !connection.isClosed, !core.closedByStack else { return }
            ngtcp2_conn_shutdown_stream_read(connection.conn, core.id, errorCode)
            core.failReceive(.streamReset(errorCode: errorCode))
            core.discardReceived()
            connection.endpoint.needsWrite(connection)
        }
    }

    public func reset(errorCode: UInt64) async {
        let core = self.core
        await core.connection.endpoint.onLoop {
            let connection = core.connection
            guard !connection.isClosed, !core.closedByStack else { return }
            ngtcp2_conn_shutdown_stream(connection.conn, core.id, errorCode)
            core.fail(.streamReset(errorCode: errorCode))
            core.discardReceived()
            connection.endpoint.needsWrite(connection)
        }
    }
}
