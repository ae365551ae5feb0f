import MemReplicaTransportCore

/// Tunables of a QUIC endpoint. Defaults suit a WAN path of up to
/// ~1 Gbit/s × 150 ms; every limit here is explicit and enforced. The
/// settings TLS over TCP shares (windows, buffers, timeouts, budget and
/// limits) are in `settings`, and read and written as this configuration's
/// own (`config.streamReceiveWindow = ...`).
@dynamicMemberLookup
public struct QUICConfiguration: Sendable, StreamTransportConfiguration {
    /// What every transport shares.
    public var settings = StreamTransportSettings()
    /// Secret from which stateless reset tokens (RFC 9000 §10.3) for our
    /// connection IDs are derived. A peer keeps it in its state folder
    /// (`StateDirectory.statelessResetKey()`), so after a restart it can
    /// still tell a peer of its previous life that the connection is gone,
    /// and that peer reconnects within a round trip instead of waiting for
    /// `livenessTimeout`. nil: a random key per endpoint (resets work only
    /// while the endpoint lives).
    public var statelessResetKey: StatelessResetKey? = nil
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
    /// Congestion controller. bbr by default: over the `bench wan` matrix
    /// cubic collapses once the path loses packets (it reads every loss
    /// as congestion), while bbr paces at the measured bottleneck rate;
    /// without loss they move the same (README, WAN; bench/RESULTS.md).
    public var congestionControl: CongestionControl = .bbr
    /// Spread packets over the RTT instead of sending bursts (RFC 9002
    /// §7.7). Keep it on for WANs; loopback benchmarks show its cost.
    public var pacing: Bool = true
    /// While urgent streams (fault and READ answers) send, bulk streams keep
    /// the connection's bytes in flight under bbr's bandwidth × (min RTT +
    /// this), so an answer waits about this long in the bottleneck's queue
    /// behind them (`BulkQueueGate`). nil: bulk fills whatever the
    /// controller allows. No effect with cubic or reno (no bandwidth
    /// estimate in ngtcp2 0.12).
    ///
    /// The price is some of the bulk's rate while reads flow; 2.5 ms was
    /// chosen by a sweep against read latency and that rate
    /// (bench/RESULTS.md, WAN efficiency).
    public var bulkQueueAllowance: Duration? = .microseconds(2500)
    /// Before sleeping, the loop polls this long for new work (nil: never).
    /// Cuts request/response latency at the price of CPU.
    public var busyPoll: Duration? = nil
    /// After a request whose follow-up is due within µs goes out (a
    /// post-copy fault's READ on a replica, its DATA on the primary: see
    /// `TransportEventLoop.keepPollingForRequests` and `pollForAnswers`),
    /// the loop polls this long for what comes next instead of sleeping: a
    /// thread waiting on the answer waits through every wake-up on the way,
    /// and each costs tens of µs on a VM. It yields the CPU while it polls,
    /// so a waiting thread on the same core still runs, and a replica stops
    /// polling once its fault READs are answered (the woken thread then has
    /// the core to itself). nil: never.
    public var requestPollWindow: Duration? = .microseconds(300)
    /// Server: 0-RTT anti-replay window (RFC 8446 §8.2). Early data is
    /// taken only from a ticket issued after the window's start, whose age
    /// the client states to within the window, and whose ClientHello was
    /// not seen before in it; otherwise the session still resumes, in 1-RTT.
    public var earlyDataReplayWindow: Duration = .seconds(10)
    /// ngtcp2's own packet trace to stderr (very verbose).
    public var debugLog: Bool = false

    /// `bbr` is ngtcp2 0.12's BBRv2 (loss-aware: it backs off when loss
    /// passes 2 %), `bbr1` its BBRv1. The TCP transports take the kernel's
    /// controller of the same family: `bbr` and `bbr1` are both the
    /// kernel's `bbr` (v1; Linux has no v2 upstream).
    public enum CongestionControl: String, Sendable, CaseIterable {
        case bbr, bbr1, cubic, reno

        /// The Linux TCP_CONGESTION name of the same family.
        public var kernelName: String {
            switch self {
            case .bbr, .bbr1: "bbr"
            case .cubic: "cubic"
            case .reno: "reno"
            }
        }

        /// Whether ngtcp2 0.12 gives this controller a pacing rate (the
        /// bandwidth estimate `BulkQueueGate` holds bulk to): bbr's only.
        public var hasPacingRate: Bool { self == .bbr || self == .bbr1 }

        /// The names, for help and errors: "bbr, bbr1, cubic or reno".
        public static var choices: String {
            let names = allCases.map(\.rawValue)
            return names.dropLast().joined(separator: ", ") + " or " + names.last!
        }
    }

    public static let memReplicaALPN = TransportDefaults.memReplicaALPN
    /// See `livenessTimeout`.
    public static let defaultLivenessTimeout = TransportDefaults.livenessTimeout

    public init() {}

    /// The shared settings, as if they were this configuration's own.
    public subscript<T>(dynamicMember setting: WritableKeyPath<StreamTransportSettings, T>) -> T {
        get { settings[keyPath: setting] }
        set { settings[keyPath: setting] = newValue }
    }
}
