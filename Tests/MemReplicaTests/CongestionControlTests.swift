@testable import MemReplica
@testable import MemReplicaQUIC
import MemReplicaTCP
@testable import MemReplicaTransportCore
import Testing

/// The controller is a setting of every transport, bbr by default, and
/// what a connection reports is what its sockets or ngtcp2 run.
@Suite("Congestion control: the setting reaches every transport and is reported")
struct CongestionControlTests {
    @Test("bbr by default, the configured one otherwise, on both ends, as statistics report it", arguments: TransportKind.allCases)
    func reported(_ kind: TransportKind) async throws {
        #expect(QUICConfiguration().congestionControl == .bbr)
        for controller in [QUICConfiguration.CongestionControl.bbr, .cubic] {
            let pki = try TestPKI()
            defer { pki.remove() }
            var server = quicConfig(server: true), client = quicConfig(server: false)
            server.congestionControl = controller
            client.congestionControl = controller
            let pair = try TransportPair(kind, pki: pki, serverConfig: server, clientConfig: client)
            let (a, b) = try await pair.connect()
            // TCP reports the kernel's name for the socket (TCP_CONGESTION), QUIC the configured one.
            let expected = kind == .quic ? controller.rawValue : controller.kernelName
            #expect(await a.statistics().congestionControl == expected)
            #expect(await b.statistics().congestionControl == expected)
            await pair.close()
        }
    }

    @Test("the TCP transports take the kernel name of the QUIC controller's family")
    func kernelNames() {
        #expect(QUICConfiguration.CongestionControl.bbr1.kernelName == "bbr")
        #expect(TCPConfiguration(matching: { var q = QUICConfiguration(); q.congestionControl = .reno; return q }()).congestionControl == "reno")
    }
}
