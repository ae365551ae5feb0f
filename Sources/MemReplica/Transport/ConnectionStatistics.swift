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

    public init() {
        latestRTT = .zero; minRTT = .zero; smoothedRTT = .zero; rttVariance = .zero
        ptoCount = 0; congestionWindow = 0; slowStartThreshold = 0; bytesInFlight = 0
        deliveryRateBytesPerSecond = 0; pacingRateBytesPerSecond = 0; maxUDPPayloadSize = 0
        bytesSent = 0; bytesReceived = 0; packetsSent = 0; packetsReceived = 0
        handshakeDuration = nil
    }
}

extension Duration {
    /// Seconds as a Double, for printing and JSON.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }

    public var milliseconds: Double { seconds * 1000 }
}
