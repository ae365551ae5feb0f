import Foundation
import Logging

/// Keeps one mirror going: connects to the exporting peer, learns the
/// region's geometry from its CATALOG, opens or creates the local file,
/// replicates, and on any failure reconnects with backoff (0.25 s doubling
/// to 5 s). Runs until cancelled.
public final class MirrorRunner: Sendable {
    public let spec: MirrorSpec
    private let endpoint: any Transport
    private let logger: Logger
    private let current = Locked<RegionMirror?>(nil)

    public init(spec: MirrorSpec, endpoint: any Transport, logger: Logger) {
        self.spec = spec
        self.endpoint = endpoint
        self.logger = logger
    }

    /// The mirror of the current connection, for status.
    public var mirror: RegionMirror? { current.withLock { $0 } }

    public func run() async {
        var backoff = Duration.milliseconds(250)
        while !Task.isCancelled {
            var connection: (any TransportConnection)?
            do {
                let connected = try await endpoint.connect(to: spec.address)
                connection = connected
                backoff = .milliseconds(250)
                let entry = try await catalogEntry(over: connected)
                let existed = FileManager.default.fileExists(atPath: spec.path)
                let region = try Region(name: spec.name, backing: .file(path: spec.path), size: Int(entry.size),
                                        chunkSize: Int(entry.chunkSize))
                let mirror = RegionMirror(region: region, offersHeldChunks: existed)
                current.withLock { $0 = mirror }
                logger.info("mirroring", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                    "geometry": "\(region.geometry)", "path": "\(spec.path)"])
                try await mirror.run(over: connected)
            } catch is CancellationError {
                await connection?.close(errorCode: 0, reason: "mirror stopped")
                return
            } catch {
                await connection?.close(errorCode: 0, reason: "mirror restarting")
                logger.warning("mirror of '\(spec.name)' from \(spec.address) interrupted: \(error); retrying in \(backoff)")
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// HELLO both ways on a control stream, then the exporter's CATALOG.
    private func catalogEntry(over connection: any TransportConnection) async throws -> Frame.CatalogEntry {
        let frames = FrameStream(try await connection.openStream())
        let me = endpoint.localIdentity
        try await frames.send(.hello(.init(peerName: me.commonName ?? me.subject)))
        try await frames.stream.finish()
        guard case .hello(let hello)? = try await frames.receive() else {
            throw ProtocolViolation(.unexpectedFrame, "the control stream starts with HELLO")
        }
        guard hello.protocolVersion == Frame.protocolVersion else {
            throw ProtocolViolation(.unsupportedVersion, "peer speaks protocol \(hello.protocolVersion)")
        }
        guard case .catalog(let entries)? = try await frames.receive() else {
            throw ProtocolViolation(.unexpectedFrame, "CATALOG follows HELLO")
        }
        guard let entry = entries.first(where: { $0.name == spec.name }) else {
            throw ReplicationError.refusedByPeer(code: ProtocolErrorCode.unknownRegion.rawValue,
                                                 message: "\(spec.address) exports \(entries.map(\.name)), not '\(spec.name)'")
        }
        return entry
    }
}
