import MemReplicaSystem
import MemReplicaTransportCore
/// Tunables of a TLS-over-TCP endpoint. The stream and window settings mean
/// what their namesakes in `QUICConfiguration` mean, so a comparison can run
/// both transports with the same limits (`init(matching:)`). Every limit here
/// is explicit and enforced.
public struct TCPConfiguration: Sendable {
    /// Application protocols offered (client) or accepted (server), in order.
    public var applicationProtocols: [String] = [TransportDefaults.memReplicaALPN]
    /// Per-stream receive window (mux flow control).
    public var streamReceiveWindow: UInt64 = 16 << 20
    /// Connection receive window (all streams together).
    public var connectionReceiveWindow: UInt64 = 64 << 20
    /// Bytes a stream may hold not yet handed to TLS before `write` suspends.
    public var streamSendBuffer: Int = 16 << 20
    /// Concurrent streams the peer may open; credit is given back as they close.
    public var maxConcurrentStreams: UInt64 = 256
    /// Liveness: a peer that sent nothing for this long (while keep-alive
    /// PINGs ask it for a PONG every `keepAliveInterval`) counts as gone and
    /// its connection ends with `TransportError.idleTimeout`; it is also the
    /// sockets' TCP_USER_TIMEOUT (data unacknowledged that long ends the
    /// connection). The default and its reasons are QUIC's
    /// (`QUICConfiguration.livenessTimeout`). A peer that restarted is
    /// noticed at once: its kernel answers with a TCP reset.
    public var livenessTimeout: Duration = TransportDefaults.livenessTimeout
    /// `livenessTimeout` under its former name.
    public var idleTimeout: Duration {
        get { livenessTimeout }
        set { livenessTimeout = newValue }
    }
    /// PINGs (answered by PONG) ask a quiet peer for bytes at this interval
    /// (at most half the liveness timeout; nil: off).
    public var keepAliveInterval: Duration? = .seconds(1)
    /// TCP connect plus TLS handshake (plus the mux SETTINGS answer) must finish by then.
    public var handshakeTimeout: Duration = .seconds(10)
    /// SO_SNDBUF/SO_RCVBUF, forced past wmem_max/rmem_max; without the
    /// privilege to force them (not root), or with nil, the kernel's
    /// autotuning sizes them (up to tcp_rmem/tcp_wmem).
    public var socketBufferSize: Int? = 16 << 20
    /// Largest DATA record we send: the round-robin quantum between streams
    /// that share one TCP connection.
    public var maxDataRecord: Int = 64 << 10
    /// Whether this endpoint listens for inbound connections.
    public var acceptsConnections: Bool = false
    /// `tcp-per-region`: every stream this side opens gets a TCP connection of
    /// its own (the best TCP can do against head-of-line blocking); false
    /// multiplexes all streams over one TCP connection. Only the connecting
    /// side chooses; a listener serves both kinds of client.
    public var connectionPerStream: Bool = false
    /// TCP_CONGESTION on every socket (listening, connecting, accepted), so
    /// the comparison with QUIC does not depend on the host's default;
    /// nil: the kernel's default. Best effort: a controller the kernel lacks
    /// or refuses leaves the default in place.
    public var congestionControl: String? = nil
    /// Create the sockets inside this network namespace (e.g. a side of a
    /// `WANEmulator`); nil: the process's own.
    public var networkNamespace: NetworkNamespace? = nil
    /// Every stream's send and receive buffers count against this budget
    /// (`QUICConfiguration.memoryBudget`).
    public var memoryBudget = MemoryBudget()
    /// Per-peer caps and timeouts (`QUICConfiguration.peerLimits`; Retry is QUIC's only).
    public var peerLimits = PeerLimits()

    public init() {}

    /// The windows this configuration grants, clamped to the memory budget.
    func clampedToBudget() -> TCPConfiguration {
        var c = self
        (c.streamReceiveWindow, c.connectionReceiveWindow) =
            memoryBudget.clampedWindows(stream: streamReceiveWindow, connection: connectionReceiveWindow)
        c.streamSendBuffer = min(streamSendBuffer, memoryBudget.limit / 4)
        return c
    }

    /// TCP connections (established or in handshake) one endpoint keeps at once.
    public static let maxLinks = 1024
    /// Bytes not yet sent that the kernel may hold per socket
    /// (TCP_NOTSENT_LOWAT). The rest waits in the mux, where urgent streams
    /// (chunk reads) can still overtake bulk ones; without it a 16 MiB
    /// socket buffer full of bulk bytes would make a read wait for all of
    /// them. 128 KiB keeps a 1 Gbit/s path busy between two wake-ups.
    public static let unsentLowWatermark = 128 << 10
    /// How long a closing TCP connection waits for the peer's end before it
    /// is dropped.
    public static let drainTimeout: Duration = .seconds(1)
}
