import MemReplicaTransportCore

extension TCPConnectionCore: EndpointConnectionCore {
    var summary: ConnectionSummary? {
        isEstablished ? ConnectionSummary(remoteAddress: remoteAddress.description, identity: peerIdentity,
                                          initiatedLocally: isClient, statistics: statistics()) : nil
    }
}
