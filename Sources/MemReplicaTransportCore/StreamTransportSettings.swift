import MemReplicaSystem

/// The settings QUIC and TLS over TCP share, with the same meaning and
/// defaults, so a comparison runs both transports on equal terms.
/// `QUICConfiguration` and `TCPConfiguration` hold one each and show its
/// fields as their own (`config.streamReceiveWindow`).
public struct StreamTransportSettings: Sendable {
    /// Application protocols offered (client) or accepted (server), in order.
    public var applicationProtocols: [String] = [TransportDefaults.memReplicaALPN]
    /// Per-stream receive window (QUIC or mux flow control). Should cover
    /// the bandwidth-delay product of one stream: 16 MiB ≈ 850 Mbit/s at
    /// 150 ms. Not more: with 32 MiB, ngtcp2 0.12.1 ended a 1 GiB
    /// single-stream sync at 150 ms / 1 % loss with ERR_INTERNAL, its
    /// limit of 1000 gaps in one stream's reassembly (bench/RESULTS.md,
    /// WAN efficiency).
    public var streamReceiveWindow: UInt64 = 16 << 20
    /// Connection receive window (all streams together). It must hold
    /// what every stream's bytes behind a lost packet add up to, or a lossy
    /// path stops the whole connection until the losses are repaired:
    /// 128 MiB covers 1 Gbit/s at 150 ms with 1 % loss over 16 streams
    /// (with 48 MiB that connection spent 7 s of 12 without credit and
    /// moved a third as much; bench/RESULTS.md, WAN efficiency).
    public var connectionReceiveWindow: UInt64 = 128 << 20
    /// Bytes a stream may hold unacknowledged (QUIC), or not yet handed to
    /// TLS (TCP), before `write` suspends.
    /// Covers the same bandwidth-delay product as the receive window.
    public var streamSendBuffer: Int = 32 << 20
    /// Concurrent bidirectional streams the peer may open; credit is given
    /// back as streams close. A peer's mirrors of our regions share one
    /// connection, with one stream per eager mirror (three per lazy one):
    /// 4096 covers 1024 lazy mirrors. A stream the peer opens and leaves
    /// without a first frame is reset after `PeerService.firstFrameTimeout`.
    public var maxConcurrentStreams: UInt64 = 4096
    /// Liveness: a peer silent for this long (nothing at all, while
    /// keep-alive PINGs ask it for a packet, or a PONG, every
    /// `keepAliveInterval`) counts as gone and its connection ends with
    /// `TransportError.idleTimeout`, so mirrors reconnect instead of
    /// waiting on a dead host. QUIC: the idle timeout (RFC 9000 §10.1: the
    /// smaller of both sides' values applies, and never less than three
    /// probe timeouts). TCP: also the sockets' TCP_USER_TIMEOUT (data
    /// unacknowledged that long ends the connection).
    ///
    /// 5 s: five keep-alives fit in it, so a few lost packets on a lossy
    /// path never end a live connection, while a vanished peer is noticed in
    /// seconds. Raise it for paths that go quiet longer (satellite links,
    /// hosts that pause). A peer that restarted is noticed sooner: by its
    /// stateless reset (QUIC, `QUICConfiguration.statelessResetKey`), or
    /// at once by its kernel's TCP reset.
    public var livenessTimeout: Duration = TransportDefaults.livenessTimeout
    /// `livenessTimeout` under QUIC's name for it (and TCP's former one).
    public var idleTimeout: Duration {
        get { livenessTimeout }
        set { livenessTimeout = newValue }
    }
    /// PINGs ask a quiet peer for a packet (QUIC) or a PONG (TCP) at this
    /// interval (at most half the liveness timeout; nil: off, and an idle
    /// connection then ends after `livenessTimeout`). Sent only when
    /// nothing else went out for that long, so a busy connection sends none.
    public var keepAliveInterval: Duration? = .seconds(1)
    /// A handshake (for TCP: connect, TLS and the mux SETTINGS answer) that
    /// has not finished by then fails.
    public var handshakeTimeout: Duration = .seconds(10)
    /// Whether this endpoint accepts inbound connections (TCP: listens).
    public var acceptsConnections: Bool = false
    /// Create the sockets inside this network namespace (e.g. a side of a
    /// `WANEmulator`); nil: the process's own.
    public var networkNamespace: NetworkNamespace? = nil
    /// Every stream's send and receive buffers count against this budget,
    /// shared by every endpoint (and copy of these settings) holding the
    /// same one; the receive windows are clamped to it (`MemoryBudget`).
    public var memoryBudget = MemoryBudget()
    /// Per-peer caps and timeouts (connections per identity and address,
    /// half-open handshakes, Retry (QUIC's only), stalled streams).
    public var peerLimits = PeerLimits()

    public init() {}

    /// The windows and send buffer these settings grant, clamped to the
    /// memory budget.
    package func clampedToBudget() -> StreamTransportSettings {
        var s = self
        (s.streamReceiveWindow, s.connectionReceiveWindow) =
            memoryBudget.clampedWindows(stream: streamReceiveWindow, connection: connectionReceiveWindow)
        s.streamSendBuffer = min(streamSendBuffer, memoryBudget.limit / 4)
        return s
    }
}
