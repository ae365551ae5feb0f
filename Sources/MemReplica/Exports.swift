// The library's public API speaks in the transports' types (addresses,
// identities, configurations, the HTTP/3 face): an application that imports
// MemReplica gets them too, as NIO's umbrella module re-exports NIOCore.
@_exported import MemReplicaHTTP3
@_exported import MemReplicaQUIC
@_exported import MemReplicaTCP
@_exported import MemReplicaTransportCore
