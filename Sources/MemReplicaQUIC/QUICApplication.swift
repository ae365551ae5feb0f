import MemReplicaTransportCore

/// An application protocol an endpoint serves next to memreplica's own,
/// chosen by ALPN (HTTP/3 is one, in MemReplicaHTTP3). A connection that
/// negotiates it is never handed to `accept`: its session takes over the
/// connection's streams and packet writing. This is the hook that keeps
/// QUIC free of any knowledge of the protocols above it.
package protocol QUICApplication: Sendable {
    /// The ALPN token a server accepts for it.
    var alpn: String { get }
    /// Unidirectional streams a client of this protocol opens at once
    /// (HTTP/3: control and two QPACK streams).
    var peerUnidirectionalStreams: UInt64 { get }
    /// A session for one server connection, made once TLS chose `alpn`
    /// (on the loop thread, before any stream data arrives).
    func session(on core: QUICConnectionCore) throws -> any QUICApplicationSession
}

/// One connection's application session. Every call comes on the
/// endpoint's loop thread, from ngtcp2's callbacks and the packet writer;
/// return values are ngtcp2 callback results (0, or an NGTCP2_ERR_*).
package protocol QUICApplicationSession: AnyObject {
    /// The handshake completed: open the protocol's own streams.
    func start() -> Bool
    func receive(stream id: Int64, _ data: UnsafePointer<UInt8>?, _ count: Int, fin: Bool) -> Int32
    func acknowledged(stream id: Int64, _ count: UInt64) -> Int32
    func streamClosed(_ id: Int64, appErrorCode: UInt64?) -> Int32
    /// The peer reset the stream or asked us to stop sending on it.
    func streamAborted(_ id: Int64)
    func flowCreditAvailable(_ id: Int64)
    func peerStreamLimitRaised(to max: UInt64)
    /// Writes the session's pending data, once established.
    func writePackets(now: UInt64) -> QUICConnectionCore.WriteOutcome
    /// The code to close with after the session failed, if it did.
    var failureCode: UInt64? { get }
    /// What the protocol sends for "no error" (HTTP/3 has no code 0).
    var noErrorCode: UInt64 { get }
    /// The connection is gone: drop the session's state.
    func close()
}
