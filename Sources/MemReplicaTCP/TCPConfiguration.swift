import MemReplicaTransportCore

/// Tunables of a TLS-over-TCP endpoint. The settings it shares with
/// `QUICConfiguration` (windows, buffers, timeouts, budget and limits) are
/// in `settings`, read and written as this configuration's own
/// (`config.streamReceiveWindow = ...`), so a comparison can run both
/// transports with the same limits (`init(matching:)`). Every limit here is
/// explicit and enforced.
@dynamicMemberLookup
public struct TCPConfiguration: Sendable, StreamTransportConfiguration {
    /// What every transport shares; the window it gives means mux flow
    /// control here.
    public var settings = StreamTransportSettings()
    /// SO_SNDBUF/SO_RCVBUF, forced past wmem_max/rmem_max; without the
    /// privilege to force them (not root), or with nil, the kernel's
    /// autotuning sizes them (up to tcp_rmem/tcp_wmem).
    public var socketBufferSize: Int? = 16 << 20
    /// Largest DATA record we send: the round-robin quantum between streams
    /// that share one TCP connection.
    public var maxDataRecord: Int = 64 << 10
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

    public init() {}

    /// The shared settings, as if they were this configuration's own.
    public subscript<T>(dynamicMember setting: WritableKeyPath<StreamTransportSettings, T>) -> T {
        get { settings[keyPath: setting] }
        set { settings[keyPath: setting] = newValue }
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
