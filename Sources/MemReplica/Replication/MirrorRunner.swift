import Foundation
import Logging

/// Keeps one mirror going: connects to the exporting peer, learns the
/// region's geometry from its CATALOG, opens or creates the local file,
/// replicates, and on any failure reconnects with backoff (0.25 s doubling
/// to 5 s). Runs until cancelled.
public final class MirrorRunner: Sendable {
    public let spec: MirrorSpec
    private let endpoint: QUICEndpoint
    private let logger: Logger
    private let current = Locked<ActiveMirror?>(nil)

    /// The mirror of the current (or last) connection.
    public enum ActiveMirror: Sendable {
        case eager(RegionMirror)
        /// Kept across reconnects: its fault handler and what it holds
        /// outlive a connection, so faults wait through one.
        case lazy(PostCopyMirror)
    }

    public init(spec: MirrorSpec, endpoint: QUICEndpoint, logger: Logger) {
        self.spec = spec
        self.endpoint = endpoint
        self.logger = logger
    }

    /// The mirror of the current connection, for status.
    public var mirror: ActiveMirror? { current.withLock { $0 } }

    public func run() async {
        defer {
            if case .lazy(let mirror)? = current.withLock({ $0 }) { mirror.stop() }
        }
        var backoff = Duration.milliseconds(250)
        while !Task.isCancelled {
            var connection: QUICConnection?
            do {
                let connection = try await endpoint.connectQUIC(to: spec.address).also { connection = $0 }
                backoff = .milliseconds(250)
                let entry = try await catalogEntry(over: connection)
                if spec.lazy {
                    let mirror = try lazyMirror(for: entry)
                    try await mirror.run(over: connection)
                } else {
                    let existed = FileManager.default.fileExists(atPath: spec.path)
                    let region = try Region(name: spec.name, backing: .file(path: spec.path), size: Int(entry.size),
                                            chunkSize: Int(entry.chunkSize))
                    let mirror = RegionMirror(region: region, offersHeldChunks: existed)
                    current.withLock { $0 = .eager(mirror) }
                    logger.info("mirroring", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                        "geometry": "\(region.geometry)", "path": "\(spec.path)"])
                    try await mirror.run(over: connection)
                }
            } catch let error as PostCopyError {
                // Not a passing fault: retrying cannot help.
                await connection?.close(errorCode: 0, reason: "mirror failed")
                logger.error("lazy mirror of '\(spec.name)' cannot run: \(error)")
                return
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

    /// The lazy mirror of the last connection when the region's geometry is
    /// unchanged, else a new one over the local file.
    private func lazyMirror(for entry: Frame.CatalogEntry) throws -> PostCopyMirror {
        if case .lazy(let mirror)? = current.withLock({ $0 }),
           UInt64(mirror.region.geometry.size) == entry.size, UInt64(mirror.region.geometry.chunkSize) == entry.chunkSize {
            return mirror
        }
        if case .lazy(let old)? = current.withLock({ $0 }) { old.stop() }
        let region = try Region(name: spec.name, backing: .file(path: spec.path), size: Int(entry.size),
                                chunkSize: Int(entry.chunkSize))
        let mirror = try PostCopyMirror(region: region, remoteName: spec.name)
        current.withLock { $0 = .lazy(mirror) }
        logger.info("mirroring lazily (post-copy)", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                               "geometry": "\(region.geometry)", "path": "\(spec.path)"])
        return mirror
    }

    /// HELLO both ways on a control stream, then the exporter's CATALOG.
    private func catalogEntry(over connection: QUICConnection) async throws -> Frame.CatalogEntry {
        let frames = FrameStream(try await connection.openQUICStream())
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

extension QUICConnection {
    fileprivate func also(_ body: (QUICConnection) -> Void) -> QUICConnection {
        body(self)
        return self
    }
}
