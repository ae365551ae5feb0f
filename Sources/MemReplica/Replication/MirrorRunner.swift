import Foundation
import Logging

/// Keeps one mirror going: connects to the exporting peer, learns the
/// region's geometry from its CATALOG, opens or creates the local file,
/// replicates, and on any failure reconnects with backoff (0.25 s doubling
/// to 5 s). Runs until cancelled.
///
/// A reconnect resumes the TLS session from the ticket the last connection
/// left, and its HELLO rides in 0-RTT: the CATALOG comes back in the first
/// round trip. HELLO is the only frame sent early (see
/// `Frame.mayArriveAsEarlyData`); SUBSCRIBE follows after the handshake.
public final class MirrorRunner: Sendable {
    public let spec: MirrorSpec
    private let endpoint: any Transport
    private let logger: Logger
    private let statistics: PeerStatistics?
    private let current = Locked<ActiveMirror?>(nil)
    private let connections = Locked(0)
    /// The last error that interrupted the mirror, and the attempt (turn of
    /// the reconnect loop) it ended; `attempts` counts the turns.
    private let failure = Locked<(reason: String, attempt: Int)?>(nil)
    private let attempts = Locked(0)

    /// The mirror of the current (or last) connection.
    public enum ActiveMirror: Sendable {
        case eager(RegionMirror)
        /// Kept across reconnects: its fault handler and what it holds
        /// outlive a connection, so faults wait through one.
        case lazy(PostCopyMirror)

        /// Eager: the primary's initial pass is applied. Lazy: the primary
        /// has answered the subscription (the mapping is usable).
        public var initialSyncComplete: Bool {
            switch self {
            case .eager(let m): m.initialSyncComplete
            case .lazy(let m): m.progress.subscribed
            }
        }

        /// Which mirror object this is (a new one per eager connection).
        public var identity: ObjectIdentifier {
            switch self {
            case .eager(let m): ObjectIdentifier(m)
            case .lazy(let m): ObjectIdentifier(m)
            }
        }
    }

    public init(spec: MirrorSpec, endpoint: any Transport, statistics: PeerStatistics? = nil, logger: Logger) {
        self.spec = spec
        self.endpoint = endpoint
        self.statistics = statistics
        self.logger = logger
    }

    /// Connections made to the primary after the first.
    public var reconnects: Int { max(0, connections.withLock { $0 } - 1) }

    /// The mirror of the current connection, for status.
    public var mirror: ActiveMirror? { current.withLock { $0 } }

    /// Why the mirror is not running, for status: the last error that
    /// interrupted it (e.g. no room for its file, or the primary's region
    /// became unavailable), until a later attempt has synced.
    public var lastFailure: String? {
        guard let failure = failure.withLock({ $0 }) else { return nil }
        if attempts.withLock({ $0 }) > failure.attempt, mirror?.initialSyncComplete == true { return nil }
        return failure.reason
    }

    private func recordFailure(_ error: any Error) {
        let attempt = attempts.withLock { $0 }
        failure.withLock { $0 = ("\(error)", attempt) }
    }

    public func run() async {
        defer {
            if case .lazy(let mirror)? = current.withLock({ $0 }) { mirror.stop() }
        }
        var backoff = Duration.milliseconds(250)
        while !Task.isCancelled {
            var connection: (any TransportConnection)?
            attempts.withLock { $0 += 1 }
            do {
                let (opened, control) = try await connectSendingHello()
                connection = opened
                backoff = .milliseconds(250)
                connections.withLock { $0 += 1 }
                statistics?.connectionEstablished(fingerprint: opened.peerIdentity.fingerprint, initiatedLocally: true)
                let stats = await opened.statistics()
                if stats.sessionResumed {
                    logger.info("resumed session (0-RTT \(stats.earlyData.rawValue))",
                                metadata: ["region": "\(spec.name)", "from": "\(spec.address)"])
                }
                let entry = try await catalogEntry(over: FrameStream(control))
                if spec.lazy {
                    let mirror = try lazyMirror(for: entry)
                    try await mirror.run(over: opened)
                } else {
                    let existed = FileManager.default.fileExists(atPath: spec.path)
                    let region = try Region(name: spec.name, backing: .file(path: spec.path), size: Int(entry.size),
                                            chunkSize: Int(entry.chunkSize))
                    let mirror = RegionMirror(region: region, offersHeldChunks: existed)
                    current.withLock { $0 = .eager(mirror) }
                    logger.info("mirroring", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                        "geometry": "\(region.geometry)", "path": "\(spec.path)"])
                    try await mirror.run(over: opened)
                }
            } catch let error as PostCopyError {
                // Not a passing fault: retrying cannot help.
                recordFailure(error)
                await connection?.close(errorCode: 0, reason: "mirror failed")
                logger.error("lazy mirror of '\(spec.name)' cannot run: \(error)")
                return
            } catch is CancellationError {
                await connection?.close(errorCode: 0, reason: "mirror stopped")
                return
            } catch {
                recordFailure(error)
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
        // Sparse: its holes are what it has not pulled (userfaultfd reports
        // them); the filesystem's free space is checked instead.
        let region = try Region(name: spec.name, backing: .file(path: spec.path), size: Int(entry.size),
                                chunkSize: Int(entry.chunkSize), allocation: .sparse)
        let mirror = try PostCopyMirror(region: region, remoteName: spec.name)
        current.withLock { $0 = .lazy(mirror) }
        logger.info("mirroring lazily (post-copy)", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                               "geometry": "\(region.geometry)", "path": "\(spec.path)"])
        return mirror
    }

    /// Connects and sends HELLO on the control stream. Over QUIC the HELLO
    /// rides in 0-RTT when a session ticket is at hand (it is replay-safe);
    /// other transports send it once connected.
    private func connectSendingHello() async throws -> (any TransportConnection, any TransportStream) {
        let me = endpoint.localIdentity
        let hello = try Frame.hello(.init(peerName: me.commonName ?? me.subject)).encoded()
        if let quic = endpoint as? QUICEndpoint {
            let (connection, control) = try await quic.connectQUIC(to: spec.address, replaySafeEarlyData: hello)
            return (connection, control)
        }
        let connection = try await endpoint.connect(to: spec.address)
        do {
            let control = try await connection.openStream()
            try await control.write(hello)
            return (connection, control)
        } catch {
            await connection.close(errorCode: 0, reason: "mirror restarting")
            throw error
        }
    }

    /// The control stream, our HELLO already sent: the exporter's HELLO,
    /// then its CATALOG.
    private func catalogEntry(over frames: FrameStream) async throws -> Frame.CatalogEntry {
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
