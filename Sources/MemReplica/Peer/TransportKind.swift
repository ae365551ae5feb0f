import MemReplicaQUIC
import MemReplicaTCP
import MemReplicaTransportCore
import Logging

/// Which transport a peer speaks: the product's QUIC, or TLS 1.3 over TCP
/// with all streams on one TCP connection or one TCP connection per stream
/// (each region stream gets its own). The TCP kinds listen on the same
/// port number, over TCP.
public enum TransportKind: String, Sendable, CaseIterable, CustomStringConvertible {
    case quic
    case tcp
    case tcpPerRegion = "tcp-per-region"

    public var description: String { rawValue }

    /// A transport of this kind bound to `address`. The QUIC configuration's
    /// windows, buffers, timeouts and ALPN apply to the TCP kinds as well
    /// (`TCPConfiguration(matching:)`).
    public func makeTransport(bind address: PeerAddress, tls: TLSConfiguration, configuration: QUICConfiguration,
                              logger: Logger) throws -> any Transport {
        switch self {
        case .quic:
            return try QUICEndpoint(bind: address, tls: tls, configuration: configuration, logger: logger)
        case .tcp, .tcpPerRegion:
            return try TCPEndpoint(bind: address, tls: tls,
                                   configuration: TCPConfiguration(matching: configuration, connectionPerStream: self == .tcpPerRegion),
                                   logger: logger)
        }
    }
}
