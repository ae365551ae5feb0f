import MemReplicaSystem
import MemReplicaTransportCore
/// Tunables of a QUIC endpoint. Defaults suit a WAN path of up to
/// ~1 Gbit/s × 150 ms; every limit here is explicit and enforced.
public struct QUICConfiguration: Sendable {
    /// Application protocols offered (client) or accepted (server), in order.
    public var applicationProtocols: [String] = [QUICConfiguration.memReplicaALPN]
    /// Per-stream receive window. Should cover the bandwidth-delay product
    /// of one stream: 16 MiB ≈ 850 Mbit/s at 150 ms.
    public var streamReceiveWindow: UInt64 = 16 << 20
    /// Connection receive window (all streams together).
    public var connectionReceiveWindow: UInt64 = 64 << 20
    /// Bytes a stream may hold unacknowledged before `write` suspends.
    public var streamSendBuffer: Int = 16 << 20
    /// Concurrent bidirectional streams the peer may open; credit is given
    /// back as streams close.
    public var maxConcurrentStreams: UInt64 = 256
    /// Liveness: a peer silent for this long (no packet at all, while
    /// keep-alive PINGs ask it for one every `keepAliveInterval`) counts as
    /// gone and its connection ends with `TransportError.idleTimeout`, so
    /// mirrors reconnect instead of waiting on a dead host. This is QUIC's
    /// idle timeout (RFC 9000 §10.1: the smaller of both sides' values
    /// applies, and never less than three probe timeouts).
    ///
    /// 5 s: five keep-alives fit in it, so a few lost packets on a lossy
    /// path never end a live connection, while a vanished peer is noticed in
    /// seconds. Raise it for paths that go quiet longer (satellite links,
    /// hosts that pause). A peer that restarted is noticed sooner, by its
    /// stateless reset (`statelessResetKey`).
    public var livenessTimeout: Duration = QUICConfiguration.defaultLivenessTimeout
    /// `livenessTimeout` under QUIC's name for it.
    public var idleTimeout: Duration {
        get { livenessTimeout }
        set { livenessTimeout = newValue }
    }
    /// PINGs ask a quiet peer for a packet at this interval (at most half
    /// the liveness timeout; nil: off, and an idle connection then ends
    /// after `livenessTimeout`). Sent only when nothing else went out for
    /// that long, so a busy connection sends none.
    public var keepAliveInterval: Duration? = .seconds(1)
    /// Secret from which stateless reset tokens (RFC 9000 §10.3) for our
    /// connection IDs are derived. A peer keeps it in its state folder
    /// (`StateDirectory.statelessResetKey()`), so after a restart it can
    /// still tell a peer of its previous life that the connection is gone,
    /// and that peer reconnects within a round trip instead of waiting for
    /// `livenessTimeout`. nil: a random key per endpoint (resets work only
    /// while the endpoint lives).
    public var statelessResetKey: StatelessResetKey? = nil
    /// A handshake that has not finished by then fails.
    public var handshakeTimeout: Duration = .seconds(10)
    /// Largest UDP payload we send. 1452 fits a 1500-byte Ethernet MTU with
    /// IPv6 headers; raise it only on paths known to carry more.
    public var maxUDPPayloadSize: Int = 1452
    /// Largest UDP payload for a peer on this same host (its address is
    /// one of ours, so the route is the loopback device and the kernel
    /// knows its MTU exactly): no path MTU discovery (ngtcp2 0.12's stops
    /// at 1406 bytes), packets up to this size or the route's MTU. nil:
    /// such peers get `maxUDPPayloadSize` like any other.
    ///
    /// 8 KiB takes a 4 KiB fault answer in one packet and moved an initial
    /// sync on loopback at 740–780 MB/s against 420–530 with 1452-byte
    /// packets. 64 KiB packets moved it at 730–950 MB/s, but a fault's
    /// answer queued behind them: fault p50 under a bulk sync rose from
    /// ~150 µs to ~410 µs.
    public var hostLocalUDPPayloadSize: Int? = 8192
    /// Datagrams per GSO send (the kernel caps a GSO send at 64 KiB).
    public var maxDatagramsPerSend: Int = 32
    /// UDP socket buffer sizes (forced past rmem_max/wmem_max when root).
    public var socketBufferSize: Int = 16 << 20
    /// Congestion controller: cubic (default, the same family as TCP's) or bbr.
    public var congestionControl: CongestionControl = .cubic
    /// Spread packets over the RTT instead of sending bursts (RFC 9002
    /// §7.7). Keep it on for WANs; loopback benchmarks show its cost.
    public var pacing: Bool = true
    /// Before sleeping, the loop polls this long for new work (nil: never).
    /// Cuts request/response latency at the price of CPU.
    public var busyPoll: Duration? = nil
    /// After a post-copy fault's READ goes out (replica), or its DATA
    /// (primary), the loop polls this long for what comes next instead of
    /// sleeping: a faulting thread waits through every wake-up on the way,
    /// and each costs tens of µs on a VM. It yields the CPU while it polls,
    /// so a faulting thread on the same core still runs. nil: never.
    public var faultReadPollWindow: Duration? = .microseconds(300)
    /// Server: 0-RTT anti-replay window (RFC 8446 §8.2). Early data is
    /// taken only from a ticket issued after the window's start, whose age
    /// the client states to within the window, and whose ClientHello was
    /// not seen before in it; otherwise the session still resumes, in 1-RTT.
    public var earlyDataReplayWindow: Duration = .seconds(10)
    /// Whether this endpoint accepts inbound connections.
    public var acceptsConnections: Bool = false
    /// ngtcp2's own packet trace to stderr (very verbose).
    public var debugLog: Bool = false
    /// Create the UDP socket inside this network namespace (e.g. a side of
    /// a `WANEmulator`); nil: the process's own.
    public var networkNamespace: NetworkNamespace? = nil
    /// Every stream's send and receive buffers count against this budget,
    /// shared by every endpoint (and copy of this configuration) holding the
    /// same one; the receive windows are clamped to it (`MemoryBudget`).
    public var memoryBudget = MemoryBudget()
    /// Per-peer caps and timeouts (connections per identity and address,
    /// half-open handshakes, Retry, stalled streams).
    public var peerLimits = PeerLimits()

    /// The windows this configuration grants, clamped to the memory budget.
    func clampedToBudget() -> QUICConfiguration {
        var c = self
        (c.streamReceiveWindow, c.connectionReceiveWindow) =
            memoryBudget.clampedWindows(stream: streamReceiveWindow, connection: connectionReceiveWindow)
        c.streamSendBuffer = min(streamSendBuffer, memoryBudget.limit / 4)
        return c
    }

    public enum CongestionControl: String, Sendable, CaseIterable {
        case cubic, bbr, reno
    }

    public static let memReplicaALPN = TransportDefaults.memReplicaALPN
    /// See `livenessTimeout`.
    public static let defaultLivenessTimeout = TransportDefaults.livenessTimeout

    public init() {}
}
