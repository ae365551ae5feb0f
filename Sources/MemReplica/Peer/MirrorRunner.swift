import MemReplicaSystem
import MemReplicaTransportCore
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
    /// What this mirror learnt from the exporter's catalog, kept across
    /// connections: the region identity followed (a stale primary with an
    /// older generation is refused), the allow rule, and why the last
    /// attempt failed, if it did.
    private let learnt = Locked(Learnt())
    /// A mirror's run over a connection is in progress.
    private let live = Locked(false)
    /// That run's connection (for `verify`).
    private let liveConnection = Locked<(any TransportConnection)?>(nil)
    /// Set once the region was handed over to this peer: the mirror ends
    /// for good (`stopForHandOver`).
    private let stopped = Locked(false)
    /// Open once `run` returned.
    private let runEnded = Latch()
    /// Open once stopped: ends a wait between attempts.
    private let stopping = Latch()

    private struct Learnt {
        var followed: RegionIdentity?
        var primaryAllow: AllowList?
        var problem: String?
        var loggedProblem: String?
    }

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

    /// How a lazy mirror made here runs (its fault wait limit, its pull).
    public let lazyOptions: PostCopyMirror.Options

    /// Where a durable mirror keeps its state file (`DurableMirrorState`).
    public let stateDirectory: StateDirectory?
    private let durableState = Locked<DurableMirrorState?>(nil)

    /// What this mirror's HELLO offers to receive (PAGES frames and their
    /// codecs); the primary uses what it supports of it.
    public let offers: WireCapabilities

    public init(spec: MirrorSpec, endpoint: any Transport, statistics: PeerStatistics? = nil,
                lazyOptions: PostCopyMirror.Options = .init(), stateDirectory: StateDirectory? = nil,
                offers: WireCapabilities = .all, logger: Logger) {
        self.offers = offers
        self.spec = spec
        self.endpoint = endpoint
        self.statistics = statistics
        self.lazyOptions = lazyOptions
        self.stateDirectory = stateDirectory
        self.logger = logger
    }

    /// A durable mirror's state file as it reads now (nil for others).
    public var durableRecord: DurableMirrorState.Record? { durableState.withLock { $0?.record } }

    /// Opens a durable mirror's state file; what it says of the file (the
    /// region followed) survives the restart.
    private func openDurableState() throws -> DurableMirrorState? {
        guard spec.durable else { return nil }
        guard let stateDirectory else {
            throw MirrorRefusal.tooLarge("mirror of '\(spec.name)': durable=true needs a state folder")
        }
        let durable = try DurableMirrorState(stateDirectory: stateDirectory, region: spec.name)
        if let r = durable.record, r.path == spec.path, !r.regionID.isEmpty {
            learnt.withLock { $0.followed = RegionIdentity(id: r.regionID, generation: r.generation) }
            let holds = r.complete ? "is a complete copy at version \(r.version) (generation \(r.generation))"
                : "is incomplete (a sync or a write was under way when the peer stopped)"
            logger.notice("durable mirror of '\(spec.name)': \(spec.path) \(holds); not synced until it converges with the primary again")
        }
        durableState.withLock { $0 = durable }
        return durable
    }

    /// Connections made to the primary after the first.
    public var reconnects: Int { max(0, connections.withLock { $0 } - 1) }

    /// The mirror of the current connection, for status.
    public var mirror: ActiveMirror? { current.withLock { $0 } }

    /// The region identity this mirror follows (nil before the first catalog).
    public var followedIdentity: RegionIdentity? { learnt.withLock { $0.followed } }

    /// Who may read this replica (over HTTP/3): the primary's allow list as
    /// the last catalog gave it, narrowed by this mirror's own `allow=`.
    /// Nobody until a catalog has been seen: a replica never serves wider
    /// than its primary, and it does not know the primary's rule before.
    public var servingRule: AllowList {
        learnt.withLock { l in
            guard let primary = l.primaryAllow else { return .nobody }
            return primary.narrowed(by: AllowList(names: spec.allowedPeers))
        }
    }

    /// True only while the replica holds the primary's current bytes: a
    /// subscription is live and its initial pass is applied (and, eager,
    /// self-checked against SYNCED's digest). False the moment the
    /// connection ends, since the primary may write on without us.
    public var synced: Bool {
        live.withLock { $0 } && (mirror?.initialSyncComplete ?? false)
    }

    /// Runs `body` (a mirror's run over one connection) as the live one.
    private func following(_ connection: any TransportConnection, _ body: () async throws -> Void) async throws {
        live.withLock { $0 = true }
        liveConnection.withLock { $0 = connection }
        defer {
            live.withLock { $0 = false }
            liveConnection.withLock { $0 = nil }
        }
        try await body()
    }

    /// The primary's allow list as its last catalog gave it (nil before one).
    public var primaryAllow: AllowList? { learnt.withLock { $0.primaryAllow } }

    /// The primary this mirror follows now (nil while not connected): only
    /// that peer may hand the region over to us.
    public var primaryIdentity: PeerIdentity? { liveConnection.withLock { $0?.peerIdentity } }

    /// Ends this mirror for good because the region is now ours (a
    /// hand-over committed): no more reconnects. Returns the eager
    /// mirror's region, which becomes the export; `closeAfterHandOver`
    /// then ends the mirror's streams to the old primary.
    func stopForHandOver() -> Region? {
        stopped.withLock { $0 = true }
        stopping.open()
        if case .eager(let m)? = mirror { return m.region }
        return nil
    }

    /// Ends the mirror's streams (the connection may carry other mirrors
    /// and closes with its last one) and waits for `run` to return.
    func closeAfterHandOver() async {
        switch mirror {
        case .eager(let m)?: await m.end()
        case .lazy(let m)?: await m.end()
        case nil: break
        }
        if !(await runEnded.wait(timeout: .seconds(5))) {
            logger.warning("mirror of '\(spec.name)' did not end within 5 s of the hand-over")
        }
    }

    /// Compares this replica with its primary (`memreplica verify`): needs
    /// a live connection to the primary.
    public func verify() async throws -> VerifyReport {
        guard let connection = liveConnection.withLock({ $0 }), let active = mirror else {
            throw ReplicationError.refusedByPeer(code: ProtocolErrorCode.regionUnavailable.rawValue,
                                                 message: "replica '\(spec.name)' is not connected to its primary "
                                                    + "(\(spec.address)) now\(problem.map { ": \($0)" } ?? "")")
        }
        let verifier: ReplicaVerifier
        switch active {
        case .eager(let m):
            verifier = ReplicaVerifier(region: m.region, remoteName: spec.name, source: spec.address.description, held: nil)
        case .lazy(let m):
            verifier = ReplicaVerifier(region: m.region, remoteName: spec.name, source: spec.address.description,
                                       held: { m.isChunkPresent($0) })
        }
        return try await verifier.run(over: connection)
    }

    /// Why the last attempt to mirror failed (a refused or unreachable
    /// primary, a region too large, no room for the file ...); nil before
    /// any failure and once the replica is synced again (kept until then,
    /// so status does not flicker between attempts).
    public var problem: String? { synced ? nil : learnt.withLock { $0.problem } }

    /// Records a failure; logs it at `error` the first time it is seen in a
    /// row and at `debug` after, so a retry loop does not flood the log.
    private func report(_ message: String) {
        let first = learnt.withLock { l -> Bool in
            l.problem = message
            defer { l.loggedProblem = message }
            return l.loggedProblem != message
        }
        if first { logger.error("\(message)") } else { logger.debug("\(message)") }
    }

    /// Mirrors until cancelled or handed over, reconnecting on failure.
    /// `shared`: the peer's connections to its primaries (one
    /// per primary for all its mirrors); nil: a connection of this mirror's own.
    public func run(using shared: PrimaryConnections? = nil) async {
        defer {
            if case .lazy(let mirror)? = current.withLock({ $0 }) { mirror.stop() }
            runEnded.open()
        }
        let pool = shared ?? PrimaryConnections(endpoint: endpoint, statistics: statistics, logger: logger)
        let durable: DurableMirrorState?
        do {
            durable = try openDurableState()
        } catch {
            report("mirror of '\(spec.name)' cannot run: \(error)")
            return
        }
        var backoff = Duration.milliseconds(250)
        var freshCatalog = false
        var lastConnection: (any TransportConnection)?
        while !Task.isCancelled && !stopped.withLock({ $0 }) {
            var lease: PrimaryConnections.Lease?
            var failure: any Error = CancellationError()
            do {
                let opened = try await pool.lease(spec.address, offers: offers, freshCatalog: freshCatalog)
                lease = opened
                if let expected = spec.expectedPrimary, !expected.matches(opened.connection.peerIdentity) {
                    throw MirrorRefusal.unexpectedPeer(
                        "mirror of '\(spec.name)': \(spec.address) is \(opened.connection.peerIdentity), not the expected "
                        + "primary (\(expected)); not mirroring from it")
                }
                backoff = .milliseconds(250)
                if lastConnection !== opened.connection {
                    connections.withLock { $0 += 1 }
                    lastConnection = opened.connection
                }
                try await follow(opened, durable: durable)
            } catch {
                failure = error
            }
            if let lease { await pool.release(lease) }
            switch failure {
            case let error as PostCopyError:
                // Not a passing fault: retrying cannot help.
                learnt.withLock { $0.problem = "\(error)" }
                logger.error("lazy mirror of '\(spec.name)' cannot run: \(error)")
                return
            case is CancellationError:
                return
            case _ where stopped.withLock({ $0 }):
                logger.info("mirror of '\(spec.name)' ended: the region was handed over to this peer")
                return
            case let refusal as MirrorRefusal:
                // Not this peer, or not this region: say so once, and look
                // again later (the right primary may come back there).
                report(refusal.description)
                backoff = .seconds(5)
            default:
                learnt.withLock { $0.problem = "\(failure)" }
                logger.warning("mirror of '\(spec.name)' from \(spec.address) interrupted: \(failure); retrying in \(backoff)")
            }
            // What failed may be the catalog's (a region since exported,
            // re-created or handed over): ask the primary again.
            freshCatalog = true
            await stopping.wait(timeout: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    /// One run over a leased connection: this region's catalog entry
    /// checked, then mirrored until the connection or a stream ends.
    private func follow(_ lease: PrimaryConnections.Lease, durable: DurableMirrorState?) async throws {
        guard let entry = lease.catalog.first(where: { $0.name == spec.name }) else {
            throw ReplicationError.refusedByPeer(code: ProtocolErrorCode.unknownRegion.rawValue,
                                                 message: "\(spec.address) exports \(lease.catalog.map(\.name)), not '\(spec.name)'")
        }
        let known = try accept(entry)
        let opened = lease.connection
        if spec.lazy {
            let mirror = try lazyMirror(for: entry)
            learnt.withLock { $0.loggedProblem = nil }
            try await following(opened) { try await mirror.run(over: opened, identity: entry.identity) }
        } else {
            let existed = FileManager.default.fileExists(atPath: spec.path)
            let region = try Region(name: spec.name, backing: .file(path: spec.path), size: Int(entry.size),
                                    chunkSize: Int(entry.chunkSize))
            let mirror = RegionMirror(region: region, offersHeldChunks: existed, known: known, identity: entry.identity,
                                      durable: durable)
            learnt.withLock { $0.loggedProblem = nil }
            current.withLock { $0 = .eager(mirror) }
            logger.info("mirroring", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                "geometry": "\(region.geometry)", "path": "\(spec.path)"])
            try await following(opened) { try await mirror.run(over: opened) }
        }
    }

    /// Checks a catalog entry before anything is created or grown: an older
    /// generation of the region than one already followed is a stale
    /// primary; a region larger than the mirror's limit (by default the
    /// free space where the file lives) is refused. Returns the identity
    /// followed before, for SUBSCRIBE.
    private func accept(_ entry: Frame.CatalogEntry) throws -> RegionIdentity? {
        let followed = learnt.withLock { $0.followed }
        if let followed, followed.id == entry.identity.id, entry.identity.generation < followed.generation {
            throw MirrorRefusal.stalePrimary(ReplicationError.staleGeneration(
                region: spec.name, seen: followed.generation, offered: entry.identity.generation).description)
        }
        let limit = try spec.maxSize ?? Self.spaceAvailable(for: spec.path)
        guard entry.size <= UInt64(limit) else {
            throw MirrorRefusal.tooLarge(
                "mirror of '\(spec.name)': the primary's region is \(entry.size) bytes, but at most \(limit) fit "
                + (spec.maxSize == nil ? "where \(spec.path) lives (free space; max-size= sets the limit)"
                                       : "(max-size=\(limit))") + "; not creating or growing the file")
        }
        learnt.withLock {
            $0.followed = entry.identity
            $0.primaryAllow = AllowList(names: entry.allowedPeers.map(Set.init))
        }
        return followed
    }

    /// Bytes the file at `path` can take: what its file system has free for
    /// an unprivileged writer, plus what the file already occupies.
    static func spaceAvailable(for path: String) throws -> Int {
        let folder = (path as NSString).deletingLastPathComponent
        var fs = statvfs()
        guard statvfs(folder.isEmpty ? "." : folder, &fs) == 0 else {
            throw MirrorRefusal.tooLarge("mirror: cannot tell the free space where \(path) lives: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        let held = stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : 0
        let free = Int(clamping: UInt64(fs.f_bavail).multipliedReportingOverflow(by: UInt64(fs.f_frsize)).partialValue)
        return free.addingReportingOverflow(held).overflow ? Int.max : free + held
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
        let mirror = try PostCopyMirror(region: region, remoteName: spec.name, options: lazyOptions)
        current.withLock { $0 = .lazy(mirror) }
        logger.info("mirroring lazily (post-copy)", metadata: ["region": "\(spec.name)", "from": "\(spec.address)",
                                                               "geometry": "\(region.geometry)", "path": "\(spec.path)"])
        return mirror
    }
}

/// Why a mirror will not follow the peer it reached; retried after a while.
enum MirrorRefusal: Error, CustomStringConvertible {
    case unexpectedPeer(String)
    case stalePrimary(String)
    case tooLarge(String)

    var description: String {
        switch self {
        case .unexpectedPeer(let m), .stalePrimary(let m), .tooLarge(let m): return m
        }
    }
}
