/// A bidirectional QUIC stream as user code sees it.
///
/// `write` copies the bytes into transport-owned memory and suspends while
/// more than `QUICConfiguration.streamSendBuffer` bytes are unacknowledged.
/// `read` returns bytes in order and gives the peer flow-control credit for
/// exactly what was read, so a slow reader slows the sender, never memory.
public final class QUICStream: TransportStream, @unchecked Sendable {
    let core: QUICStreamCore
    public var id: Int64 { core.id }
    private var endpoint: QUICEndpoint { core.connection.endpoint }

    init(core: QUICStreamCore) { self.core = core }

    public func write(_ bytes: [UInt8]) async throws {
        try await bytes.withUnsafeBytes { raw in
            let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: raw.count, alignment: 16)
            memory.copyMemory(from: raw)
            return memory
        }.sendThrough(self)
    }

    public func write(_ bytes: UnsafeRawBufferPointer) async throws {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        memory.copyMemory(from: bytes)
        try await memory.sendThrough(self)
    }

    /// Hands owned memory to the loop; suspends for backpressure.
    fileprivate func enqueue(_ memory: OwnedBytes) async throws {
        let core = self.core
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            endpoint.post {
                if let error = core.sendError ?? core.connection.closeError {
                    memory.memory.deallocate()
                    c.resume(throwing: error)
                    return
                }
                if core.finRequested {
                    memory.memory.deallocate()
                    c.resume(throwing: TransportError.protocolFailure("write after finish on stream \(core.id)"))
                    return
                }
                core.sendBuffer.append(owning: memory.memory)
                core.connection.schedule(core)
                if core.sendBuffer.unacknowledged <= core.connection.endpoint.configuration.streamSendBuffer {
                    c.resume()
                } else {
                    core.writeWaiters.append(c)
                }
            }
        }
    }

    public func finish() async throws {
        let core = self.core
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            endpoint.post {
                if let error = core.sendError ?? core.connection.closeError {
                    c.resume(throwing: error)
                    return
                }
                core.finRequested = true
                core.connection.schedule(core)
                c.resume()
            }
        }
    }

    public func read(maxLength: Int = 1 << 20) async throws -> [UInt8]? {
        precondition(maxLength > 0, "maxLength must be positive")
        let core = self.core
        return try await withCheckedThrowingContinuation { c in
            endpoint.post {
                guard core.readWaiter == nil else {
                    c.resume(throwing: TransportError.protocolFailure("concurrent reads on stream \(core.id)"))
                    return
                }
                core.readWaiter = (maxLength, c)
                core.satisfyReader()
            }
        }
    }

    public func reset(errorCode: UInt64) async {
        let core = self.core
        await endpoint.onLoop {
            let connection = core.connection
            guard !connection.isClosed, !core.closedByStack else { return }
            ngtcp2_conn_shutdown_stream(connection.conn, core.id, errorCode)
            core.fail(.streamReset(errorCode: errorCode))
            connection.endpoint.needsWrite(connection)
        }
    }
}

/// Heap bytes whose ownership moves to the loop thread with the command.
struct OwnedBytes: @unchecked Sendable {
    let memory: UnsafeMutableRawBufferPointer
}

extension UnsafeMutableRawBufferPointer {
    fileprivate func sendThrough(_ stream: QUICStream) async throws {
        try await stream.enqueue(OwnedBytes(memory: self))
    }
}

import QuicShim
