@testable import MemReplica

/// The faults the error tests need, for whichever transport is under test.
protocol FaultRelay: AnyObject, Sendable {
    var port: UInt16 { get }
    /// Forward nothing more, in either direction, and close nothing.
    func cut()
    /// Let the client reach the server but hold back the handshake's answer.
    func stallHandshake()
    func stop()
}

extension UDPRelay: FaultRelay {
    func stallHandshake() { allowServerDatagrams(1) }
}

extension TCPRelay: FaultRelay {
    func stallHandshake() { allowServerBytes(0) }
}

extension TransportKind {
    func relay(toServerPort port: UInt16) -> any FaultRelay {
        self == .quic ? UDPRelay(toServerPort: port) : TCPRelay(toServerPort: port)
    }

    /// A loopback port where nothing of this kind listens.
    var unusedPort: UInt16 { self == .quic ? unusedUDPPort() : unusedTCPPort() }
}
