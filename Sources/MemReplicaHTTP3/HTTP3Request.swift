import MemReplicaTransportCore
/// One HTTP/3 request as a responder sees it: its head already parsed and
/// checked against `HTTP3Limits`, from a client whose certificate TLS
/// verified against the peer's CA (the same rule as memreplica peers).
public struct HTTP3Request: Sendable {
    public var method: String
    /// The request target as sent, query included.
    public var path: String
    public var peer: PeerIdentity

    public init(method: String, path: String, peer: PeerIdentity) {
        self.method = method
        self.path = path
        self.peer = peer
    }
}
