/// What one peer may make an endpoint hold or wait for, beyond the memory
/// budget. Both transports enforce every field (Retry is QUIC's only); a
/// connection over a cap is refused with a one-line reason, never by
/// exhausting the process. The defaults are documented in the README
/// (Security).
public struct PeerLimits: Sendable, Equatable {
    /// Established connections one certificate (by SHA-256 fingerprint) may
    /// hold at once. Each mirror and lazy mirror opens a connection of its
    /// own, so a peer mirroring many regions from us needs several.
    public var maxConnectionsPerIdentity = 64
    /// Connections (half-open or established) from one source IP address.
    /// Loopback tests and peers behind one NAT share an address: keep it
    /// above `maxConnectionsPerIdentity`.
    public var maxConnectionsPerAddress = 128
    /// Handshakes from one source IP address not yet complete. A handshake
    /// costs a TLS session and a certificate check; 16 covers a peer
    /// reconnecting all its mirrors at once.
    public var maxHalfOpenPerAddress = 16
    /// QUIC: once this many handshakes are half-open in all, an Initial
    /// without a valid token gets a Retry (RFC 9000 §8.1.2), so a spoofed
    /// source address cannot make us keep state or amplify traffic.
    public var retryThreshold = 64
    /// A stream with unsent or unacknowledged bytes (QUIC), or bytes not
    /// yet handed to TLS (TCP), that makes no progress this long is reset:
    /// its peer stopped reading, and its buffers must not be held forever.
    public var stalledStreamTimeout: Duration = .seconds(30)
    /// How long a Retry token stays valid.
    public static let retryTokenLifetime: Duration = .seconds(10)

    public init() {}
}
