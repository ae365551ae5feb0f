/// Defaults every transport shares, so a comparison between them runs on
/// equal terms.
public enum TransportDefaults {
    /// ALPN of memreplica's own protocol (docs/PROTOCOL.md).
    public static let memReplicaALPN = "memreplica/1"
    /// How long a silent peer is trusted before its connection is declared
    /// dead: keep-alives run at a third of it.
    public static let livenessTimeout: Duration = .seconds(5)
}
