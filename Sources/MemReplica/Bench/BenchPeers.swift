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
        var logger = Logger(label: "memreplica.bench")
        logger.logLevel = .warning
        var serverConfig = quic
        serverConfig.acceptsConnections = true
        var clientConfig = quic
        clientConfig.acceptsConnections = false
        let server = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.files(for: "bench-server").tls,
                                      configuration: serverConfig, logger: logger)
        let client = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: clientTLS,
                                      configuration: clientConfig, logger: logger)
        return (server, client)
    }

    /// A listening endpoint serving `exports` on its first connection, and a
    /// client connected to it. Cancel the task and close both when done.
    func connectServing(_ exports: RegionExports) async throws
        -> (server: QUICEndpoint, client: QUICEndpoint, connection: QUICConnection, serving: Task<Void, Never>) {
        let (server, client) = try endpoints()
        let serving = Task {
            guard let conn = await server.acceptQUIC() else { return }
            await withDiscardingTaskGroup { group in
                while let stream = try? await conn.acceptStream() {
                    group.addTask { await exports.serve(stream, peer: conn.peerIdentity) }
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
        var logger = Logger(label: "memreplica.bench")
        logger.logLevel = .warning
        var serverConfig = quic
        serverConfig.acceptsConnections = true
        var clientConfig = quic
        clientConfig.acceptsConnections = false
        let server = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.files(for: "bench-server").tls,
                                            configuration: serverConfig, logger: logger)
        let client = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: clientTLS,
                                            configuration: clientConfig, logger: logger)
        return (server, client)
    }
}
