@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
@testable import MemReplicaWAN
import Crypto
import Foundation
import Logging

/// A scratch directory with a CA and peer certificates, made fresh per use.
struct TestPKI {
    let directory: String
    let server: CertificateAuthority.PeerFiles
    let client: CertificateAuthority.PeerFiles

    init(peers: (String, String) = ("server", "client")) throws {
        directory = NSTemporaryDirectory() + "memreplica-test-\(UUID().uuidString)"
        let files = try CertificateAuthority.initialize(directory: directory, peers: [peers.0, peers.1])
        server = files[0]
        client = files[1]
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

func quicConfig(server: Bool, idle: Duration = .seconds(30)) -> QUICConfiguration {
    var c = QUICConfiguration()
    c.acceptsConnections = server
    c.idleTimeout = idle
    c.handshakeTimeout = .seconds(5)
    return c
}

/// A listening endpoint on an ephemeral loopback port and a client endpoint.
struct EndpointPair {
    let server: QUICEndpoint
    let client: QUICEndpoint
    var serverAddress: PeerAddress { get throws { try PeerAddress(host: "127.0.0.1", port: server.localAddress.port) } }

    init(pki: TestPKI, serverConfig: QUICConfiguration = quicConfig(server: true),
         clientConfig: QUICConfiguration = quicConfig(server: false), clientTLS: TLSConfiguration? = nil) throws {
        server = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls, configuration: serverConfig)
        client = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: clientTLS ?? pki.client.tls, configuration: clientConfig)
    }

    /// Connects the client to the server and returns both ends, within 10 s.
    func connect(_ what: String = "connect") async throws -> (client: QUICConnection, server: QUICConnection) {
        let address = try serverAddress
        async let accepted = server.acceptQUIC()
        let client = try await withTimeout(10, what) { try await self.client.connectQUIC(to: address) }
        guard let serverSide = await accepted else {
            throw TransportError.protocolFailure("the server endpoint closed before accepting")
        }
        return (client, serverSide)
    }

    func close() async {
        await client.close()
        await server.close()
    }
}

/// Deterministic pseudo-random bytes (xorshift) so senders and checkers agree.
func patternBytes(count: Int, seed: UInt64) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { fillPattern($0, seed: seed) }
    return out
}

func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

/// Fails the surrounding test if `body` has not finished within `seconds`.
func withTimeout<T: Sendable>(_ seconds: Double, _ what: String = "operation",
                              _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        guard let first = try await group.next(), let value = first else {
            group.cancelAll()
            throw TimeoutError(what: what, seconds: seconds)
        }
        group.cancelAll()
        return value
    }
}

struct TimeoutError: Error, CustomStringConvertible {
    let what: String
    let seconds: Double
    var description: String { "\(what) did not finish within \(seconds) s" }
}

/// A listening transport of one kind and a client transport of the same
/// kind, with the QUIC-style configurations mapped to TCP where needed.
struct TransportPair {
    let kind: TransportKind
    let server: any Transport
    let client: any Transport
    var serverAddress: PeerAddress { get throws { try PeerAddress(host: "127.0.0.1", port: server.localAddress.port) } }

    init(_ kind: TransportKind, pki: TestPKI, serverConfig: QUICConfiguration = quicConfig(server: true),
         clientConfig: QUICConfiguration = quicConfig(server: false), clientTLS: TLSConfiguration? = nil) throws {
        self.kind = kind
        server = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                        configuration: serverConfig, logger: testLogger)
        client = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: clientTLS ?? pki.client.tls,
                                        configuration: clientConfig, logger: testLogger)
    }

    /// Connects the client to the server and returns both ends, within 10 s.
    func connect(_ what: String = "connect") async throws -> (client: any TransportConnection, server: any TransportConnection) {
        let address = try serverAddress
        async let accepted = server.accept()
        let client = try await withTimeout(10, what) { try await self.client.connect(to: address) }
        guard let serverSide = await accepted else {
            throw TransportError.protocolFailure("the server endpoint closed before accepting")
        }
        return (client, serverSide)
    }

    func close() async {
        await client.close()
        await server.close()
    }
}

/// Warnings and errors only: transport tests provoke failures on purpose.
let testLogger: Logger = {
    var l = Logger(label: "test")
    l.logLevel = .warning
    return l
}()

/// A listening server of `kind` in the emulator's side A and a client in
/// side B, so that everything between them crosses the emulated link.
struct WANTransportPair {
    let server: any Transport
    let client: any Transport
    let serverAddress: PeerAddress

    /// `configure` adjusts both sides' QUIC settings (TCP takes the matching ones).
    init(_ kind: TransportKind, over emulator: WANEmulator, pki: TestPKI,
         configure: (inout QUICConfiguration) -> Void = { _ in }) throws {
        var serverConfig = quicConfig(server: true)
        serverConfig.networkNamespace = emulator.sideA
        configure(&serverConfig)
        var clientConfig = quicConfig(server: false)
        clientConfig.networkNamespace = emulator.sideB
        configure(&clientConfig)
        server = try kind.makeTransport(bind: PeerAddress(host: emulator.addressA, port: 0), tls: pki.server.tls,
                                        configuration: serverConfig, logger: testLogger)
        client = try kind.makeTransport(bind: PeerAddress(host: emulator.addressB, port: 0), tls: pki.client.tls,
                                        configuration: clientConfig, logger: testLogger)
        serverAddress = try PeerAddress(host: emulator.addressA, port: server.localAddress.port)
    }
}

/// Two `memreplica peer` processes on loopback sharing the state folder
/// `root` (and so its development CA): "primary" exports region `r` from
/// `primaryPath` (control socket root/p.sock), "replica" mirrors it to
/// `replicaPath` (root/r.sock). Returns once the primary's control socket
/// exists, with the replica started.
struct PeerProcessPair {
    let primary: ChildProcess
    let replica: ChildProcess

    init(root: String, primaryPath: String, replicaPath: String, lazy: Bool,
         primaryArguments: [String] = []) async throws {
        let exe = try builtExecutable()
        let port = unusedUDPPort()
        primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root, "--name", "primary",
                                         "--control", root + "/p.sock", "--export", "r=\(primaryPath)",
                                         "--log-level", "warning"] + primaryArguments)
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: root + "/p.sock") {
            guard ContinuousClock.now < deadline else {
                primary.terminate(grace: .milliseconds(100))
                throw TimeoutError(what: "the primary peer's start", seconds: 60)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        replica = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedUDPPort())", "--state-dir", root,
                                         "--name", "replica", "--control", root + "/r.sock",
                                         "--mirror", "r@127.0.0.1:\(port)=\(replicaPath)", "--log-level", "warning"]
                                        + (lazy ? ["--lazy"] : []))
    }

    /// Stops the replica, then the primary.
    func terminate(grace: Duration) {
        replica.terminate(grace: grace)
        primary.terminate(grace: grace)
    }
}

/// A logger that says nothing below critical (for suites whose peers log a lot).
func silentLogger() -> Logger {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}

/// Polls `condition` every 5 ms until it holds; throws after `seconds`.
func pollUntil(_ what: String, seconds: Double, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
        try await Task.sleep(for: .milliseconds(5))
    }
}
