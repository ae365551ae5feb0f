/// One line of `memreplica status`: who is connected and how far away.
public struct ConnectionSummary: Sendable, Codable {
    public var remoteAddress: String
    public var identity: PeerIdentity
    public var initiatedLocally: Bool
    public var statistics: ConnectionStatistics

    package init(remoteAddress: String, identity: PeerIdentity, initiatedLocally: Bool, statistics: ConnectionStatistics) {
        self.remoteAddress = remoteAddress
        self.identity = identity
        self.initiatedLocally = initiatedLocally
        self.statistics = statistics
    }
}
