import MemReplicaTransportCore

extension QUICConnectionCore: EndpointConnectionCore {
    package var summary: ConnectionSummary? {
        guard case .established = state else { return nil }
        return ConnectionSummary(remoteAddress: remoteAddress.description, identity: peerIdentity,
                                 initiatedLocally: isClient, statistics: statistics())
    }
}
