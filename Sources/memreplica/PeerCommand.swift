import ArgumentParser
import Foundation
import Logging
import MemReplica

struct PeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract: "Run a peer until SIGINT or SIGTERM.",
        discussion: """
            Accepts QUIC connections from peers that prove, with a certificate signed by the \
            same CA, who they are (mutual TLS 1.3). Until replication lands, every stream a peer \
            opens is echoed back (what 'memreplica ping' measures). Without --cert/--key/--ca a \
            development CA is made in the state folder on first run.
            """)

    @Option(help: ArgumentHelp("Where to listen: HOST:PORT, [IPv6]:PORT, or :PORT for every interface (IPv4 and IPv6).",
                               valueName: "host:port"))
    var listen = ":4433"

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
        "Mirror a region another peer exports into a local file: NAME@HOST:PORT=PATH.", valueName: "spec"))
    var mirrors: [String] = []

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        for e in exports {
            do { _ = try ExportSpec(parsing: e) } catch { throw ValidationError("--export: \(error)") }
        }
        for m in mirrors {
            do { _ = try MirrorSpec(parsing: m) } catch { throw ValidationError("--mirror: \(error)") }
        }
    }

    func run() async throws {
        let logger = logging.makeLogger(defaultLevel: .info)
        // Before anything else, so a signal during start-up still ends cleanly.
        let signals = SignalMonitor { number in
            CommandRunner.printError("\(SignalMonitor.name(of: number)) again: exiting without a clean shutdown")
            Foundation.exit(1)
        }
        let address = try PeerAddress(parsing: listen)
        let stateDirectory = state.directory
        try stateDirectory.create()
        let tlsConfiguration = try tls.configuration(state: stateDirectory, peerName: name ?? PeerName.hostDefault,
                                                     logger: logger)
        var quic = QUICConfiguration()
        quic.acceptsConnections = true
        let endpoint = try transport.makeTransport(bind: address, tls: tlsConfiguration, configuration: quic, logger: logger)
        let exported: [RegionExports.Export]
        do {
            exported = try exports.map { text in
                let spec = try ExportSpec(parsing: text)
                let region = try Region(name: spec.name, backing: .file(path: spec.path), size: spec.size,
                                        chunkSize: spec.chunkSize)
                logger.notice("exporting '\(spec.name)' from \(spec.path): \(region.geometry)")
                return RegionExports.Export(region: region, allowedPeers: spec.allowedPeers)
            }
        } catch {
            await endpoint.close()
            throw error
        }
        let runners = try mirrors.map { MirrorRunner(spec: try MirrorSpec(parsing: $0), endpoint: endpoint, logger: logger) }
        let service = PeerService(endpoint: endpoint, exports: RegionExports(exported, logger: logger),
                                  mirrors: runners, logger: logger)
        let controlPath = control ?? stateDirectory.controlSocketPath
        let controlServer: ControlServer
        do {
            controlServer = try ControlServer(path: controlPath, logger: logger) { await service.handle($0) }
        } catch {
            await endpoint.close()
            throw error
        }
        logger.info("control socket at \(controlPath)")
        let serving = Task { await service.run() }

        let number = await signals.wait()
        logger.notice("\(SignalMonitor.name(of: number)) received: shutting down")
        // Control socket first: a status query must not reach a closed endpoint.
        await controlServer.stop()
        await endpoint.close()
        await serving.value
        logger.notice("stopped")
    }
}
