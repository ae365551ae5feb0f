import MemReplica
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import Logging

/// The two loopback endpoints every benchmark runs between, with a fresh
/// PKI made in the benchmark's work folder.
struct BenchPeers {
    let pki: CertificateAuthority.Layout

    init(workDirectory: String) throws {
        pki = CertificateAuthority.Layout(directory: workDirectory + "/pki")
        try CertificateAuthority.initialize(directory: pki.directory, peers: ["bench-server", "bench-client"], force: true)
    }

    var clientTLS: TLSConfiguration { pki.files(for: "bench-client").tls }

    /// A listening server endpoint and a client endpoint on 127.0.0.1.
    func endpoints(_ quic: QUICConfiguration = QUICConfiguration()) throws -> (server: QUICEndpoint, client: QUICEndpoint) {
        try pair(quic) { try QUICEndpoint(bind: $0, tls: $1, configuration: $2, logger: $3) }
    }

    /// A server (accepting) and a client made by `make` on 127.0.0.1, with
    /// the bench's certificates and a quiet logger.
    private func pair<T>(_ quic: QUICConfiguration,
                         server: (host: String, namespace: NetworkNamespace?) = ("127.0.0.1", nil),
                         client: (host: String, namespace: NetworkNamespace?) = ("127.0.0.1", nil),
                         _ make: (PeerAddress, TLSConfiguration, QUICConfiguration, Logger) throws -> T) throws
        -> (server: T, client: T) {
        var logger = Logger(label: "memreplica.bench")
        logger.logLevel = .warning
        var serverConfig = quic
        serverConfig.acceptsConnections = true
        serverConfig.networkNamespace = server.namespace
        var clientConfig = quic
        clientConfig.acceptsConnections = false
        clientConfig.networkNamespace = client.namespace
        return (try make(try PeerAddress(host: server.host, port: 0), pki.files(for: "bench-server").tls, serverConfig, logger),
                try make(try PeerAddress(host: client.host, port: 0), clientTLS, clientConfig, logger))
    }

    /// Two QUIC endpoints that both accept connections (two peers: a
    /// migration connects both ways), each in its namespace if given.
    func peers(_ quic: QUICConfiguration,
               a: (host: String, namespace: NetworkNamespace?) = ("127.0.0.1", nil),
               b: (host: String, namespace: NetworkNamespace?) = ("127.0.0.1", nil)) throws -> (a: QUICEndpoint, b: QUICEndpoint) {
        var logger = Logger(label: "memreplica.bench")
        logger.logLevel = .warning
        var configA = quic, configB = quic
        configA.acceptsConnections = true
        configB.acceptsConnections = true
        configA.networkNamespace = a.namespace
        configB.networkNamespace = b.namespace
        return (try QUICEndpoint(bind: try PeerAddress(host: a.host, port: 0), tls: pki.files(for: "bench-server").tls,
                                 configuration: configA, logger: logger),
                try QUICEndpoint(bind: try PeerAddress(host: b.host, port: 0), tls: clientTLS, configuration: configB,
                                 logger: logger))
    }

    /// A listening endpoint serving `exports` on its first connection, and a
    /// client connected to it. Cancel the task and close both when done.
    func connectServing(_ exports: RegionExports, offered: WireCapabilities = .all) async throws
        -> (server: QUICEndpoint, client: QUICEndpoint, connection: QUICConnection, serving: Task<Void, Never>) {
        let (server, client) = try endpoints()
        let serving = Task {
            guard let conn = await server.acceptQUIC() else { return }
            await withDiscardingTaskGroup { group in
                while let stream = try? await conn.acceptStream() {
                    group.addTask { await exports.serve(stream, peer: conn.peerIdentity, offered: offered) }
                }
            }
        }
        let conn = try await client.connectQUIC(to: PeerAddress(host: "127.0.0.1", port: server.localAddress.port))
        return (server, client, conn, serving)
    }

    /// A listening server and a client of `kind` on 127.0.0.1 (the TCP kinds
    /// take the QUIC configuration's windows and buffers).
    func transports(_ kind: TransportKind, _ quic: QUICConfiguration = QUICConfiguration()) throws
        -> (server: any Transport, client: any Transport) {
        if kind == .quic { return try endpoints(quic) }
        return try pair(quic) { try kind.makeTransport(bind: $0, tls: $1, configuration: $2, logger: $3) }
    }

    /// A listening server and a client of `kind` bound to the given hosts,
    /// each creating its sockets in its network namespace (the WAN
    /// emulator's two sides).
    func transports(_ kind: TransportKind, _ quic: QUICConfiguration,
                    server: (host: String, namespace: NetworkNamespace?),
                    client: (host: String, namespace: NetworkNamespace?)) throws
        -> (server: any Transport, client: any Transport) {
        try pair(quic, server: server, client: client) {
            try kind.makeTransport(bind: $0, tls: $1, configuration: $2, logger: $3)
        }
    }
}
