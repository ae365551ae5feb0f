/// A snapshot of one connection, taken on its event loop. The RTT, window and
/// rate fields come from the QUIC stack; byte and packet counters are ours.
/// Over TCP all of them are the kernel's (TCP_INFO): path figures of the
/// first TCP connection, counters summed over all of them (segments for
/// packets, the MSS as the largest payload).
public struct ConnectionStatistics: Sendable, Codable, Equatable {
    public var latestRTT: Duration
    public var minRTT: Duration
    public var smoothedRTT: Duration
    public var rttVariance: Duration
    public var ptoCount: Int
    public var congestionWindow: UInt64
    public var slowStartThreshold: UInt64
    public var bytesInFlight: UInt64
    public var deliveryRateBytesPerSecond: UInt64
    public var pacingRateBytesPerSecond: Double
    public var maxUDPPayloadSize: Int
    public var bytesSent: UInt64
    public var bytesReceived: UInt64
    public var packetsSent: UInt64
    public var packetsReceived: UInt64
    /// Connect call to confirmed handshake, for connections we started.
    public var handshakeDuration: Duration?
    /// The TLS handshake resumed an earlier session from a ticket: no
    /// certificates were sent, the identities are those of that session.
    public var sessionResumed: Bool
    /// What became of 0-RTT early data on this connection.
    public var earlyData: EarlyDataOutcome
    /// The congestion controller sending on this connection: QUIC's as
    /// configured (`bbr` is ngtcp2's BBRv2), TCP's as the kernel reports it
    /// for the session socket (TCP_CONGESTION).
    public var congestionControl: String
    /// How long the bulk queue gate (`BulkQueueGate`) has held bulk
    /// streams on this connection; nil where there is no gate (TCP, cubic
    /// and reno, a peer on this host, `--bulk-queue off`).
    public var bulkQueueHeld: Duration?

    public init() {
        latestRTT = .zero; minRTT = .zero; smoothedRTT = .zero; rttVariance = .zero
        ptoCount = 0; congestionWindow = 0; slowStartThreshold = 0; bytesInFlight = 0
        deliveryRateBytesPerSecond = 0; pacingRateBytesPerSecond = 0; maxUDPPayloadSize = 0
        bytesSent = 0; bytesReceived = 0; packetsSent = 0; packetsReceived = 0
        handshakeDuration = nil
        sessionResumed = false
        earlyData = .notAttempted
        congestionControl = ""
    }
}

/// 0-RTT early data on one connection. A server reports only `accepted`
/// or `notAttempted`: a refused attempt looks to it like none.
public enum EarlyDataOutcome: String, Sendable, Codable, Equatable {
    /// No early data was sent (no ticket, or the caller asked for none).
    case notAttempted = "not attempted"
    /// The server took the early data; it was not sent twice.
    case accepted
    /// The server refused it; it was sent again after the handshake.
    case rejected
}
