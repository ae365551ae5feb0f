import MemReplica
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import ArgumentParser
import Foundation
import Logging

struct PeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract: "Run a peer until SIGINT or SIGTERM.",
        discussion: """
            Accepts QUIC connections from peers that prove, with a certificate signed by the \
            same CA, who they are (mutual TLS 1.3). Until replication lands, every stream a peer \
            opens is echoed back (what 'memreplica ping' measures). Without --cert/--key/--ca a \
            development CA is made in the state folder on first run. Settings can also come from \
            a JSON file (--config): flags given replace its values, --export/--mirror add to its lists.
            """)

    @Option(help: ArgumentHelp("Read settings from a JSON config file (see README, 'Config file').", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("Where to listen: HOST:PORT, [IPv6]:PORT, or :PORT for every interface (IPv4 and IPv6). Default: :4433.",
                               valueName: "host:port"))
    var listen: String?

    @Option(help: ArgumentHelp(
        "quic, or TLS 1.3 over TCP on the same port number: tcp (one TCP connection for all regions) or tcp-per-region (one per region). Mirrors connect with it too.",
        valueName: "kind"))
    var transport: TransportKind = .quic

    @OptionGroup var tls: TLSOptions

    @Option(help: ArgumentHelp("Control socket for 'memreplica status' (default: STATE_DIR/control.sock).", valueName: "path"))
    var control: String?

    @OptionGroup var state: StateOptions

    @Option(help: "Name in the development certificate (default: the hostname). Unused with --cert.")
    var name: String?

    @Option(name: .customLong("export"), help: ArgumentHelp(
        "Export a region: NAME=PATH[,size=BYTES][,chunk=BYTES][,allow=CN+CN]. PATH is a file (/dev/shm/... for shared memory); size creates or extends it.",
        valueName: "spec"))
    var exports: [String] = []

    @Option(name: .customLong("mirror"), help: ArgumentHelp(
        "Mirror a region another peer exports into a local file: NAME@HOST:PORT=PATH[,peer=CN|sha256=FINGERPRINT][,allow=CN+CN][,max-size=BYTES][,durable=true].",
        valueName: "spec"))
    var mirrors: [String] = []

    @Flag(help: ArgumentHelp(
        "Make the --mirror regions post-copy: usable at once, chunks pulled on first touch (PATH must be under /dev/shm)."))
    var lazy = false

    @Option(help: ArgumentHelp(
        "Serve Prometheus metrics at http://HOST:PORT/metrics. A bare :PORT means 127.0.0.1 (use 0.0.0.0:PORT or [::]:PORT to expose them). Off unless given.",
        valueName: "host:port"))
    var metrics: String?

    @Option(help: ArgumentHelp(
        "Congestion controller for QUIC and the TCP transports: bbr (default; ngtcp2's BBRv2, the kernel's bbr for TCP), bbr1, cubic or reno. Over lossy long paths cubic collapses; bbr does not.",
        valueName: "name"))
    var cc: String?

    @Option(help: ArgumentHelp(
        "Compression of chunk pages on the wire, used when the link, measured, is slower than the compressor: lz4 (default), zstd (level 1), or none (this peer's mirrors also ask for uncompressed pages).",
        valueName: "codec"))
    var compression: String?

    @Option(help: ArgumentHelp(
        "Seconds a process attached to a lazy replica may wait on a chunk that cannot come (primary out of reach, install failing) before its read fails (default 10).",
        valueName: "seconds"))
    var faultTimeout: Double?

    @Option(help: ArgumentHelp(
        "Seconds a silent peer has (keep-alives unanswered) before it counts as gone and its mirrors reconnect. Default: 5.",
        valueName: "seconds"))
    var liveness: String?

    @Option(help: ArgumentHelp(
        "While reads are answered, QUIC bulk keeps the bottleneck's queue to this many milliseconds (default 2.5), so answers do not wait behind it; off: bulk takes all the controller allows.",
        valueName: "ms|off"))
    var bulkQueue: String?

    @Option(help: ArgumentHelp(
        "Bytes all stream send and receive buffers may hold, e.g. 512M or 2G (default: 1/8 of RAM, at most 4G; see README, Security).",
        valueName: "size"))
    var memoryBudget: String?

    @Option(help: ArgumentHelp(
        "Take migrations of regions this peer does not mirror: their mirror is started for the migration, into DIR/NAME.region (default: refuse them).",
        valueName: "dir"))
    var acceptMigrations: String?

    @OptionGroup var logging: LoggingOptions

    /// The config file, if any, with this command line on top.
    func configuration() throws -> PeerConfiguration {
        var configuration = try config.map { try PeerConfiguration(contentsOfFile: $0) } ?? PeerConfiguration()
        try configuration.applyCommandLine(listen: listen, name: name, stateDirectory: state.stateDir, control: control,
                                           tls: tls.files, exports: exports, mirrors: mirrors, lazyMirrors: lazy,
                                           metrics: metrics, faultTimeout: faultTimeout, liveness: liveness,
                                           memoryBudget: memoryBudget, acceptMigrations: acceptMigrations,
                                           bulkQueue: bulkQueue)
        return configuration
    }

    func run() async throws {
        // First: a usage error must stop the peer before it creates anything.
        let configuration = try configuration()
        let logger = logging.makeLogger(defaultLevel: .info)
        // Before anything else, so a signal during start-up still ends cleanly.
        let signals = SignalMonitor { number in
            CommandRunner.printError("\(SignalMonitor.name(of: number)) again: exiting without a clean shutdown")
            Foundation.exit(1)
        }
        let address = try configuration.listenAddress
        let stateDirectory = StateDirectory(explicit: configuration.stateDirectory)
        try stateDirectory.create()
        let tlsConfiguration = try TLSOptions.configuration(
            configuration.tls, names: tls.files == nil ? ["tls.cert", "tls.key", "tls.ca"] : ["--cert", "--key", "--ca"],
            state: stateDirectory, peerName: configuration.name ?? PeerName.hostDefault, logger: logger)
        let quic = try quicConfiguration(configuration, stateDirectory: stateDirectory)
        let endpoint = try transport.makeTransport(bind: address, tls: tlsConfiguration, configuration: quic, logger: logger)
        let exported: [RegionExports.Export]
        let mirrorSpecs: [MirrorSpec]
        do {
            (exported, mirrorSpecs) = try Self.regions(configuration, stateDirectory: stateDirectory, logger: logger)
        } catch {
            await endpoint.close()
            throw error
        }
        Self.warnAboutTrustingMirrors(configuration, logger: logger)
        let statistics = PeerStatistics(metrics: configuration.metrics == nil ? nil : PrometheusStatistics())
        var lazyOptions = PostCopyMirror.Options()
        if let limit = configuration.faultTimeout { lazyOptions.faultWaitLimit = limit }
        let wire = PageCodec.settings(try compression.map { name in
            guard let codec = PageCodec(name: name) else { throw ValidationError("--compression must be zstd, lz4 or none, not '\(name)'") }
            return codec
        } ?? configuration.compression)
        let runners = mirrorSpecs.map {
            MirrorRunner(spec: $0, endpoint: endpoint, statistics: statistics, lazyOptions: lazyOptions,
                         stateDirectory: stateDirectory, offers: wire.offers, logger: logger)
        }
        let exports = RegionExports(exported, observer: statistics, codecPreference: wire.preference,
                                    lanes: .standard(for: transport), logger: logger)
        let service = PeerService(endpoint: endpoint, exports: exports,
                                  mirrors: runners, statistics: statistics,
                                  identities: RegionIdentityStore(stateDirectory: stateDirectory),
                                  acceptMigrationsInto: configuration.acceptMigrations, logger: logger)
        // The HTTP/3 face shares the QUIC port (ALPN h3) and its mutual TLS.
        if let quicEndpoint = endpoint as? QUICEndpoint {
            await quicEndpoint.serveHTTP3(PeerHTTP3Responder(service: service))
        }
        var metricsServer: MetricsServer?
        if let address = configuration.metrics, let metrics = statistics.metrics {
            do {
                metricsServer = try MetricsServer(address: address, logger: logger) { metrics.exposition() }
            } catch {
                await endpoint.close()
                throw error
            }
        }
        let controlPath = configuration.control ?? stateDirectory.controlSocketPath
        let controlServer: ControlServer
        do {
            controlServer = try ControlServer(path: controlPath, logger: logger,
                                              attachHandler: { service.attach($0, from: $1) }) { await service.handle($0) }
        } catch {
            metricsServer?.stop()
            await endpoint.close()
            throw error
        }
        logger.info("control socket at \(controlPath)")
        let serving = Task { await service.run() }

        let number = await signals.wait()
        logger.notice("\(SignalMonitor.name(of: number)) received: shutting down")
        // Control socket first: a status query must not reach a closed endpoint.
        await controlServer.stop()
        metricsServer?.stop()
        await endpoint.close()
        await serving.value
        logger.notice("stopped")
    }

    /// The transport's settings: listening, the congestion controller
    /// (--cc over the config file), liveness, reset key and memory budget.
    private func quicConfiguration(_ configuration: PeerConfiguration,
                                   stateDirectory: StateDirectory) throws -> QUICConfiguration {
        var quic = QUICConfiguration()
        quic.acceptsConnections = true
        if let controller = cc ?? configuration.congestionControl {
            guard let chosen = QUICConfiguration.CongestionControl(rawValue: controller) else {
                throw ValidationError("--cc must be \(QUICConfiguration.CongestionControl.choices), not '\(controller)'")
            }
            quic.congestionControl = chosen
        }
        if let liveness = configuration.livenessTimeout { quic.livenessTimeout = liveness }
        if let bulkQueue = configuration.bulkQueue { quic.bulkQueueAllowance = bulkQueue.allowance }
        // Kept across restarts, so a restarted peer resets its old connections.
        quic.statelessResetKey = try stateDirectory.statelessResetKey()
        if let budget = configuration.memoryBudget { quic.memoryBudget = MemoryBudget(limit: budget) }
        return quic
    }

    /// Opens (or creates) each exported region's file, and decides what the
    /// state folder's hand-over records change (docs/MIGRATION.md): a region
    /// handed over is not exported (its file mirrors the new owner when the
    /// hand-over said so); a region taken over is exported even though a
    /// mirror line names it.
    private static func regions(_ configuration: PeerConfiguration, stateDirectory: StateDirectory,
                                logger: Logger) throws -> ([RegionExports.Export], [MirrorSpec]) {
        let identities = RegionIdentityStore(stateDirectory: stateDirectory)
        var exports: [RegionExports.Export] = []
        var mirrors: [MirrorSpec] = []
        for spec in configuration.exports {
            let identity: RegionIdentity
            do {
                // A new generation per start: writes made while no peer
                // tracked the file are unknown to every mirror.
                identity = try identities.advance(region: spec.name, path: spec.path)
            } catch let moved as RegionIdentityStore.HandedOver {
                logger.error("\(moved)")
                if moved.handOver.state == "done", moved.handOver.then == "mirror" {
                    let address = try PeerAddress(parsing: moved.handOver.owner)
                    mirrors.append(try MirrorSpec(name: spec.name, address: address, path: spec.path))
                    logger.notice("'\(spec.name)' mirrors its new owner \(moved.handOver.owner) into \(spec.path)")
                }
                continue
            }
            let region = try Region(name: spec.name, backing: .file(path: spec.path), size: spec.size,
                                    chunkSize: spec.chunkSize)
            logger.notice("exporting '\(spec.name)' from \(spec.path): \(region.geometry), generation \(identity.generation)")
            exports.append(RegionExports.Export(region: region, allowedPeers: spec.allowedPeers, identity: identity))
        }
        for spec in configuration.mirrors {
            guard let taken = try identities.takenOver(region: spec.name, path: spec.path), let chunkSize = taken.chunkSize else {
                mirrors.append(spec)
                continue
            }
            if let source = taken.filling {
                logger.error("\(incompleteFill(spec.name, path: spec.path, source: source))")
                continue
            }
            let identity = try identities.advance(region: spec.name, path: spec.path)
            let region = try Region(name: spec.name, backing: .file(path: spec.path), size: nil, chunkSize: chunkSize)
            logger.notice("""
                exporting '\(spec.name)' from \(spec.path) instead of mirroring it: it was handed over to this peer \
                (\(region.geometry), generation \(identity.generation))
                """)
            exports.append(RegionExports.Export(region: region, allowedPeers: taken.allowedPeers.map(Set.init),
                                                identity: identity))
        }
        // Regions handed to this peer that no line names (taken with --accept-migrations).
        let named = Set(configuration.exports.map(\.name) + configuration.mirrors.map(\.name))
        for taken in identities.allTakenOver() {
            guard let name = taken.name, !named.contains(name), let chunkSize = taken.chunkSize,
                  FileManager.default.fileExists(atPath: taken.path) else { continue }
            if let source = taken.filling {
                logger.error("\(incompleteFill(name, path: taken.path, source: source))")
                continue
            }
            let identity = try identities.advance(region: name, path: taken.path)
            let region = try Region(name: name, backing: .file(path: taken.path), size: nil, chunkSize: chunkSize)
            logger.notice("exporting '\(name)' from \(taken.path): it was handed over to this peer (generation \(identity.generation))")
            exports.append(RegionExports.Export(region: region, allowedPeers: taken.allowedPeers.map(Set.init), identity: identity))
        }
        return (exports, mirrors)
    }

    /// A region taken over by post-copy whose fill a stop interrupted: its
    /// file lacks chunks (holes read as zeros), so it is never served.
    private static func incompleteFill(_ name: String, path: String, source: String) -> String {
        "'\(name)' was taken over by post-copy and this peer stopped before every chunk had come from \(source): "
            + "\(path) is incomplete and is not exported (the source may still serve its frozen copy: migrate it again, "
            + "or restore the region from a complete copy)"
    }

    /// Mirrors that name no expected primary accept any peer the CA signed.
    private static func warnAboutTrustingMirrors(_ configuration: PeerConfiguration, logger: Logger) {
        let trusting = configuration.mirrors.filter { $0.expectedPrimary == nil }.map(\.name)
        if !trusting.isEmpty {
            let names = trusting.joined(separator: ", ")
            logger.warning("mirrors \(names) accept any peer the CA signed as their primary; name the expected one with peer=CN or sha256=FINGERPRINT in --mirror (config: \"expect\")")
        }
    }
}
