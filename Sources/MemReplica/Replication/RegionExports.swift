import MemReplicaSystem
import MemReplicaTransportCore
import Logging
import DequeModule

/// The regions this peer exports, and the primary side of replication: it
/// answers a mirror's SUBSCRIBE on a region stream with the region's chunks
/// (the initial sync), then keeps sending every chunk that changes.
public final class RegionExports: Sendable {
    public struct Export: Sendable {
        public let region: Region
        /// Common names of the peers that may mirror it; nil lets any peer
        /// signed by the CA.
        public let allowedPeers: Set<String>?
        /// The region's id and owner generation in this run.
        public let identity: RegionIdentity
        public init(region: Region, allowedPeers: Set<String>? = nil, identity: RegionIdentity = .fresh()) {
            self.region = region
            self.allowedPeers = allowedPeers
            self.identity = identity
        }
        public var allow: AllowList { AllowList(names: allowedPeers) }
    }

    /// Where a region this peer no longer exports went (a hand-over).
    public struct Moved: Sendable, Equatable {
        public var identity: RegionIdentity
        /// The new owner's address, as the migration reached it.
        public var owner: String
        public init(identity: RegionIdentity, owner: String) {
            self.identity = identity
            self.owner = owner
        }
    }

    private struct Table {
        var exports: [String: Export] = [:]
        /// The last DIRTY epoch announced per region, across its
        /// subscriptions: epochs only grow within a generation, so a lazy
        /// mirror that comes back on a new stream never sees one go backwards.
        var epochs: [String: Locked<UInt64>] = [:]
        var moved: [String: Moved] = [:]
        /// Who may learn where a moved region went: its last allow list.
        var movedAllow: [String: AllowList] = [:]
        /// Post-copy sources: the one peer a region is served to.
        var servingOnly: [String: String] = [:]
    }

    /// The exports change at run time only by a hand-over (`add`,
    /// `relinquish`); every stream reads a snapshot.
    private let table: Locked<Table>
    private var exports: [String: Export] { table.withLock { $0.exports } }
    /// Mirrors being served now, for status.
    private let subscriptions = Locked<[Int: MirrorState]>([:])
    private let nextSubscription = Locked(0)

    /// One mirror of one exported region, as the primary sees it.
    public struct MirrorState: Sendable, Equatable {
        public var region: String
        public var peer: String
        /// Highest version sent, and highest the mirror acknowledged.
        public var sentVersion: UInt64 = 0
        public var acknowledgedVersion: UInt64 = 0
        public var synced = false
        /// Scan passes completed after the initial pass, and when the
        /// last completed one began: a pass that began after a writer
        /// stopped has sent everything that writer stored.
        public var passes: UInt64 = 0
        public var lastPassBegan: ContinuousClock.Instant?
        /// How long the last pass took (its scan and sends): writes made
        /// during a long pass wait for the next one.
        public var lastPassSeconds: Double = 0
        /// Chunks the pass under way found changed and has not sent yet
        /// (a pass held up by the congestion window leaves many).
        public var passPending = 0
        /// When the pass under way began (nil between passes).
        public var passBegan: ContinuousClock.Instant?
        /// How long the last pass's scan of the tracker took (a hashed
        /// region's is a full read: the final flush pays it too).
        public var lastScanSeconds: Double = 0
        /// Streams the initial pass went over: the region stream and the
        /// lanes that joined it (1 without lanes; 0 until the pass is sent).
        public var passStreams = 0
        /// Passes (the initial one included) sent over lanes.
        public var passesOverLanes = 0
        public var versionLag: UInt64 { sentVersion - acknowledgedVersion }
    }

    /// Told of every chunk a region's eager subscriptions push, and of every
    /// chunk its reads streams answer (a migration counts bytes and re-sent
    /// chunks with it).
    public typealias SendTap = @Sendable (_ peer: String, _ chunk: Int, _ bytes: Int) -> Void
    let sendTaps = Locked<[String: SendTap]>([:])
    /// Wakes the region's publish loops for a pass before their interval ends.
    private let passTriggers = Locked<[String: [ObjectIdentifier: PassTrigger]]>([:])

    /// Sets (or with nil removes) the tap of `region`'s pushes.
    public func tapSends(of region: String, _ tap: SendTap?) {
        sendTaps.withLock { $0[region] = tap }
    }

    /// Post-copy cuts asked for, by region and peer.
    private let cuts = Locked<[String: [String: SubscriptionCut]]>([:])

    /// Asks `peer`'s eager subscription of `region` for a cut (see
    /// `SubscriptionCut`); its answer comes within a chunk's push.
    public func cutSubscription(of region: String, for peer: String) -> SubscriptionCut {
        let cut = SubscriptionCut()
        cuts.withLock { $0[region, default: [:]][peer] = cut }
        requestPass(of: region)
        return cut
    }

    /// Forgets the cut of `peer`'s subscription of `region`; `release`d
    /// first, its subscription ends and the mirror resubscribes.
    public func endCut(of region: String, for peer: String, release: Bool) {
        let cut = cuts.withLock { $0[region]?.removeValue(forKey: peer) }
        if release { cut?.release() }
    }

    /// Serves `name` to the peer with `fingerprint` only (nil: to whom its
    /// allow list names): a post-copy source serves its frozen region to
    /// the new owner until that holds every chunk. Ends with `relinquish`.
    public func serveOnly(_ name: String, to fingerprint: String?) {
        table.withLock { $0.servingOnly[name] = fingerprint }
    }

    /// A subscription's publish loop waits on this between passes: the
    /// scan clock fires it when `changes` has chunks, `requestPass` when a
    /// pass is wanted now.
    private func followPasses(of region: Region, _ changes: ChangeSubscription) -> PassTrigger {
        let trigger = PassTrigger()
        passTriggers.withLock { $0[region.name, default: [:]][ObjectIdentifier(trigger)] = trigger }
        scanClock.register(changes, trigger: trigger)
        return trigger
    }

    private func unfollowPasses(of region: Region, _ trigger: PassTrigger) {
        scanClock.unregister(trigger)
        passTriggers.withLock { _ = $0[region.name]?.removeValue(forKey: ObjectIdentifier(trigger)) }
    }

    /// Asks every subscription of `region` for a scan pass now.
    public func requestPass(of region: String) {
        for trigger in passTriggers.withLock({ Array(($0[region] ?? [:]).values) }) { trigger.fire() }
    }

    /// Every mirror being served, by region name.
    public func mirrorStates() -> [MirrorState] {
        subscriptions.withLock { Array($0.values) }.sorted { ($0.region, $0.peer) < ($1.region, $1.peer) }
    }
    /// How often the regions' trackers are scanned for changed chunks
    /// (`ScanClock`, one for all regions).
    public let scanInterval: Duration
    private let scanClock: ScanClock
    /// A subscription whose region did not change passes this often anyway:
    /// it checks that the region is still servable and still ours.
    static let idlePassInterval: Duration = .seconds(1)
    let observer: (any ReplicationObserver)?
    private let logger: Logger
    /// Regions whose failure was logged already (once each).
    private let reportedFailures = Locked<Set<String>>([])

    /// Whether SYNCED carries a digest (eager mirrors): each chunk of the
    /// initial pass is then copied and hashed before it is sent. Off only
    /// to measure what the check costs (`bench sync`).
    public let syncedDigests: Bool

    /// What this exporter sends beyond WRITE when a mirror's HELLO offers
    /// it (PAGES frames, and their codecs: the first both sides take).
    public let wireCapabilities: WireCapabilities
    /// Codecs in the order this exporter prefers them.
    public let codecPreference: [PageCodec]

    /// Per region: what its subscriptions sent against what changed.
    private let savings = Locked<[String: WireSavings]>([:])

    /// How many streams an eager pass is spread over, and from what size,
    /// for a mirror that offered `lanes`.
    public let lanePolicy: LanePolicy
    /// Passes under way over lanes, by token: LANE streams join them.
    private let passLanes = Locked<[[UInt8]: PassLanes]>([:])

    /// What each exported region's eager subscriptions saved on the wire so far.
    public func wireSavings() -> [String: WireSavings] { savings.withLock { $0 } }

    public init(_ exports: [Export], scanInterval: Duration = .milliseconds(20),
                observer: (any ReplicationObserver)? = nil, syncedDigests: Bool = true,
                wireCapabilities: WireCapabilities = .all, codecPreference: [PageCodec] = [.lz4, .zstd],
                lanes: LanePolicy = .single, logger: Logger) {
        var table = Table()
        table.exports = Dictionary(exports.map { ($0.region.name, $0) }, uniquingKeysWith: { first, _ in first })
        table.epochs = table.exports.mapValues { _ in Locked(0) }
        self.table = Locked(table)
        self.scanInterval = scanInterval
        scanClock = ScanClock(interval: scanInterval)
        self.observer = observer
        self.syncedDigests = syncedDigests
        self.wireCapabilities = wireCapabilities
        self.codecPreference = codecPreference
        lanePolicy = lanes
        self.logger = logger
    }

    /// The codec for a mirror that offered `offered`: the first of ours it takes.
    func codec(for offered: WireCapabilities) -> PageCodec? {
        let both = offered.intersection(wireCapabilities)
        guard both.contains(.pages) else { return nil }
        return codecPreference.first { both.codecs.contains($0) } ?? PageCodec.none
    }

    public func export(named name: String) -> Export? { exports[name] }

    /// Starts exporting `export` (a region this peer now owns, e.g. handed
    /// over to it). Throws when a region of that name is exported already.
    public func add(_ export: Export) throws {
        let name = export.region.name
        try table.withLock { t in
            guard t.exports[name] == nil else { throw ExportTableError.alreadyExported(name) }
            t.exports[name] = export
            t.epochs[name] = Locked(0)
            t.moved[name] = nil
        }
    }

    /// Stops exporting `name`, which now belongs to `moved.owner` at
    /// `moved.identity`: new subscriptions are refused with `stale_generation`
    /// naming the owner, and the streams serving it end the same way at
    /// their next pass. Returns the export it was, nil if none.
    @discardableResult
    public func relinquish(_ name: String, movedTo moved: Moved) -> Export? {
        defer { requestPass(of: name) }
        return table.withLock { t in
            t.moved[name] = moved
            t.movedAllow[name] = t.exports[name]?.allow ?? t.movedAllow[name]
            t.epochs[name] = nil
            t.servingOnly[name] = nil
            return t.exports.removeValue(forKey: name)
        }
    }

    /// Every region this peer handed over, by name.
    public func movedRegions() -> [String: Moved] { table.withLock { $0.moved } }

    /// Where `name` went, if this peer handed it over.
    public func moved(_ name: String) -> Moved? { table.withLock { $0.moved[name] } }

    /// Throws `stale_generation` when `region` is no longer exported as
    /// `identity` (handed over since the stream began).
    private func checkStillOwned(_ region: Region, as identity: RegionIdentity) throws(ProtocolViolation) {
        let (current, moved) = table.withLock { ($0.exports[region.name], $0.moved[region.name]) }
        guard current?.region !== region || current?.identity != identity else { return }
        throw Self.movedViolation(region.name, moved)
    }

    private static func movedViolation(_ name: String, _ moved: Moved?) -> ProtocolViolation {
        guard let moved else { return ProtocolViolation(.unknownRegion, "'\(name)' is no longer exported here") }
        return ProtocolViolation(.staleGeneration,
                                 "'\(name)' moved to \(moved.owner) at generation \(moved.identity.generation)")
    }

    /// Checks every exported region's backing (`Region.checkBacking`) and
    /// logs each that failed, once; the peer calls it periodically, so a
    /// truncated file is reported even while no mirror reads the region.
    /// Returns the failed regions' names and why.
    @discardableResult
    public func checkRegions() -> [String: String] {
        var failed: [String: String] = [:]
        for (name, export) in exports {
            guard let reason = export.region.failure else { continue }
            failed[name] = reason
            reportUnavailable(name, reason)
        }
        return failed
    }

    private func reportUnavailable(_ region: String, _ reason: String) {
        guard reportedFailures.withLock({ $0.insert(region).inserted }) else { return }
        logger.error("region '\(region)' is unavailable: \(reason)", metadata: ["region": "\(region)"])
    }

    /// Throws `region_unavailable` once the region's backing failed:
    /// `checkingSize` also compares the file's size (an fstat, once per
    /// pass); without it only the SIGBUS count is read (after every copy).
    static func servable(_ region: Region, checkingSize: Bool = false) throws(ProtocolViolation) {
        if let reason = region.unavailability(checkingSize: checkingSize) {
            throw ProtocolViolation(.regionUnavailable, "region '\(region.name)' is unavailable: \(reason)")
        }
    }

    /// How each exported region with at least one mirror is tracked now:
    /// tracker kind, why, and its scan times.
    public func dirtyTracking() -> [String: DirtyTrackingStatus] {
        exports.compactMapValues { RegionChangeFeed.status(of: $0.region) }
    }

    /// Every export, by name (for this peer's own reports).
    public func catalog() -> [Frame.CatalogEntry] {
        exports.values.sorted { $0.region.name < $1.region.name }.map {
            .init(name: $0.region.name, size: UInt64($0.region.geometry.size),
                  chunkSize: UInt64($0.region.geometry.chunkSize), identity: $0.identity,
                  allowedPeers: $0.allow.catalogForm)
        }
    }

    /// What a CATALOG frame to `peer` lists: the exports it may see.
    public func catalog(for peer: PeerIdentity) -> [Frame.CatalogEntry] {
        catalog().filter { exports[$0.name]?.allow.permits(peer) ?? false }
    }

    /// Serves one region stream until the mirror goes away or breaks the
    /// protocol. Never throws: failures end this stream only, with a code.
    public func serve(_ stream: any TransportStream, peer: PeerIdentity, offered: WireCapabilities = []) async {
        let frames = FrameStream(stream)
        do {
            switch try await frames.receive() {
            case nil:
                return
            case .subscribe(let s)?:
                await serve(frames, subscription: s, peer: peer, offered: offered)
            case .lane(let token, let index)?:
                try await joinLane(frames, token: token, index: index, peer: peer)
            default:
                throw ProtocolViolation(.unexpectedFrame, "a region stream starts with SUBSCRIBE, a lane with LANE")
            }
        } catch let violation as ProtocolViolation {
            await frames.fail(violation)
        } catch {
            logger.info("region stream ended: \(error)", metadata: ["peer": "\(peer)"])
        }
    }

    /// Serves a region stream whose SUBSCRIBE was already read. `offered`:
    /// what the mirror's HELLO on this connection said it can receive.
    public func serve(_ frames: FrameStream, subscription: Frame.Subscribe, peer: PeerIdentity,
                      offered: WireCapabilities = []) async {
        do {
            let export = try acceptSubscription(subscription, peer: peer)
            if subscription.mode == .verify {
                try await serveDigests(export.region, over: frames)
                return
            }
            if subscription.mode.isReads {
                // Someone waits on each answer (a fault, a read): it goes
                // ahead of bulk pushes sharing the connection. A pull is a
                // bulk push of its own: urgent, it would starve the region
                // stream's SYNCED and DIRTY.
                let forFaults = subscription.mode == .reads
                if forFaults { await frames.stream.prioritize() }
                try await serveReads(export.region, over: frames, peer: peer.commonName ?? peer.subject, forFaults: forFaults)
                return
            }
            let held = try await receiveHashes(frames, count: subscription.hashedChunks, of: export.region)
            logger.info("mirror subscribed", metadata: ["peer": "\(peer)", "region": "\(subscription.name)",
                                                        "resuming": "\(held != nil)"])
            let id = nextSubscription.withLock { n -> Int in n += 1; return n }
            subscriptions.withLock {
                $0[id] = MirrorState(region: subscription.name, peer: peer.commonName ?? peer.subject)
            }
            defer { subscriptions.withLock { _ = $0.removeValue(forKey: id) } }
            let peerName = peer.commonName ?? peer.subject
            let record: @Sendable ((inout MirrorState) -> Void) -> Void = { [subscriptions] update in
                subscriptions.withLock { all in
                    if var state = all[id] {
                        update(&state)
                        all[id] = state
                    }
                }
            }
            let key = ChunkHashKey(bytes: subscription.hashKey)!
            if subscription.mode == .lazy {
                try await publishDirty(export.region, as: export.identity, over: frames, mirrorHolds: held, key: key,
                                       epoch: epoch(of: export.region.name), record: record)
            } else {
                // This subscription's passes over lanes (the last one may be
                // under way): forgotten, and the open one ended, when it ends.
                let lanes = Locked<[PassLanes]>([])
                do {
                    try await publish(export.region, as: export.identity, over: frames,
                                      lanes: offered.contains(.lanes) ? (peer.fingerprint, lanes) : nil, mirrorHolds: held,
                                      key: key, peer: peerName, codec: codec(for: offered), record: record)
                } catch {
                    let passes = lanes.withLock { $0 }
                    endLanes(passes)
                    for pass in passes { await pass.abandon(code: (error as? ProtocolViolation)?.code ?? .internalError) }
                    throw error
                }
            }
        } catch let sent as ViolationSent {
            log(sent.violation, region: subscription.name, peer: peer)
        } catch let violation as ProtocolViolation {
            log(violation, region: subscription.name, peer: peer)
            await frames.fail(violation)
        } catch {
            logger.info("region stream ended: \(error)", metadata: ["peer": "\(peer)"])
        }
    }

    private func log(_ violation: ProtocolViolation, region name: String, peer: PeerIdentity) {
        if violation.code == .regionUnavailable, let region = exports[name]?.region {
            reportUnavailable(name, region.failure ?? violation.detail)
            logger.info("region stream ended: \(violation)", metadata: ["peer": "\(peer)"])
        } else {
            logger.warning("region stream refused: \(violation)", metadata: ["peer": "\(peer)"])
        }
    }

    private func epoch(of name: String) -> Locked<UInt64> {
        table.withLock { t in
            if let e = t.epochs[name] { return e }
            let e = Locked<UInt64>(0)
            t.epochs[name] = e
            return e
        }
    }

    private func acceptSubscription(_ s: Frame.Subscribe, peer: PeerIdentity) throws -> Export {
        // A peer the allow list leaves out learns nothing, not even that
        // the region exists.
        let (found, moved, movedAllow, only) = table.withLock {
            ($0.exports[s.name], $0.moved[s.name], $0.movedAllow[s.name], $0.servingOnly[s.name])
        }
        if found == nil, let moved, movedAllow?.permits(peer) ?? false {
            throw Self.movedViolation(s.name, moved)
        }
        guard let export = found, export.allow.permits(peer) else {
            throw ProtocolViolation(.unknownRegion, "no region named '\(s.name)' is exported to this peer")
        }
        if let only, only != peer.fingerprint {
            throw ProtocolViolation(.regionUnavailable, "'\(s.name)' was handed over after post-copy; it is served "
                                    + "to its new owner only, until that holds every chunk")
        }
        let g = export.region.geometry
        guard s.size == UInt64(g.size), s.chunkSize == UInt64(g.chunkSize) else {
            throw ProtocolViolation(.geometryMismatch,
                                    "'\(s.name)' is \(g.size) bytes in \(g.chunkSize)-byte chunks, not \(s.size) in \(s.chunkSize)")
        }
        if s.knownRegionID == export.identity.id, s.knownGeneration > export.identity.generation {
            throw ProtocolViolation(.staleGeneration,
                                    "'\(s.name)' is at generation \(export.identity.generation) here, but the mirror "
                                    + "followed generation \(s.knownGeneration): a newer owner exists")
        }
        if s.mode == .eager || s.mode == .lazy, ChunkHashKey(bytes: s.hashKey) == nil {
            throw ProtocolViolation(.malformedFrame, "a \(s.mode) SUBSCRIBE carries a \(ChunkHashKey.byteCount)-byte hash key")
        }
        try Self.servable(export.region, checkingSize: true)
        return export
    }

    /// The hashes a resuming mirror sends in HAVE frames, in chunk order.
    private func receiveHashes(_ frames: FrameStream, count: UInt64, of region: Region) async throws -> [ChunkHash]? {
        guard count > 0 else { return nil }
        let chunks = region.geometry.chunkCount
        guard count == UInt64(chunks) else {
            throw ProtocolViolation(.malformedFrame, "SUBSCRIBE announces \(count) chunk hashes for a \(chunks)-chunk region")
        }
        var hashes: [ChunkHash] = []
        hashes.reserveCapacity(chunks)
        while hashes.count < chunks {
            guard case .have(let first, let part)? = try await frames.receive() else {
                throw ProtocolViolation(.unexpectedFrame, "expected HAVE for chunk \(hashes.count)")
            }
            guard first == UInt64(hashes.count), hashes.count + part.count <= chunks else {
                throw ProtocolViolation(.malformedFrame, "HAVE for chunks \(first)..+\(part.count), expected from \(hashes.count)")
            }
            hashes += part
        }
        return hashes
    }

    /// Armed before an initial pass copies a chunk, so a write during the
    /// pass is sent again after it. One tracker per region, shared by its
    /// mirrors (see RegionChangeFeed); which one, and why, is logged.
    private func subscribeToChanges(of region: Region) -> ChangeSubscription {
        let changes = RegionChangeFeed.subscribe(to: region, logger: logger)
        let tracking = changes.status
        logger.info("dirty tracking", metadata: [
            "region": "\(region.name)", "tracker": "\(tracking.kind)", "reason": "\(tracking.reason)",
            "mirrors": "\(tracking.subscribers)",
        ])
        return changes
    }

    /// A mirror's side of a region stream: ACKs of versions (eager) or
    /// epochs (lazy) up to what was sent; one past it is a lie.
    private static func receiveAcks(on frames: FrameStream, upTo sent: Locked<UInt64>,
                                    _ acknowledged: (UInt64) -> Void) async throws {
        while let frame = try await frames.receive() {
            switch frame {
            case .ack(let version):
                guard version <= sent.withLock({ $0 }) else {
                    throw ProtocolViolation(.unexpectedFrame, "ACK of version \(version), never sent")
                }
                acknowledged(version)
            case .error(let code, let message):
                throw ReplicationError.refusedByPeer(code: code, message: message)
            default:
                throw ProtocolViolation(.unexpectedFrame, "a mirror sends only ACK on its region stream")
            }
        }
    }

    /// A violation already told to the mirror (ERROR sent, stream ended).
    private struct ViolationSent: Error {
        let violation: ProtocolViolation
    }

    /// How long a subscription that failed here waits for its mirror to
    /// leave after the ERROR before it stops reading the mirror's side.
    static let mirrorLeaveTimeout: Duration = .seconds(10)

    /// Waits for the first of a subscription's two tasks to end. Should
    /// the sending side fail here (the region became unavailable), the ACK
    /// reader would wait for the mirror for ever (reads do not see
    /// cancellation), so the stream is ended here: ERROR and FIN, then a
    /// wait (at most `mirrorLeaveTimeout`) for the mirror, which leaves once
    /// it has read the ERROR, and only then STOP_SENDING. Why: a
    /// STOP_SENDING sent right after the ERROR (as `FrameStream.fail` does)
    /// can leave the mirror without the ERROR, waiting for data that never
    /// comes.
    private static func firstToEnd(of group: inout ThrowingTaskGroup<Void, any Error>, on frames: FrameStream) async throws {
        do {
            try await group.next()
        } catch let violation as ProtocolViolation {
            do {
                try await frames.send(.error(code: violation.code.rawValue, message: violation.detail))
                try await frames.stream.finish()
                group.addTask { try await Task.sleep(for: mirrorLeaveTimeout) }
                _ = try? await group.next()
            } catch {
                // The stream broke meanwhile: nothing more to say on it.
            }
            group.cancelAll()
            await frames.stream.stopReading(errorCode: violation.code.rawValue)
            throw ViolationSent(violation: violation)
        } catch {
            await frames.stream.stopReading(errorCode: ProtocolErrorCode.internalError.rawValue)
            throw error
        }
        group.cancelAll()
    }

    /// Lazy (post-copy) mirrors: no bytes are pushed. A resuming mirror
    /// first hears DIRTY for every chunk whose hash differs from what it
    /// holds; then SYNCED; then one DIRTY per scan that found changes. The
    /// mirror drops those chunks and pulls them when touched; it ACKs each
    /// DIRTY's epoch once the chunks are dropped.
    private func publishDirty(_ region: Region, as identity: RegionIdentity, over frames: FrameStream, mirrorHolds held: [ChunkHash]?,
                              key: ChunkHashKey, epoch regionEpoch: Locked<UInt64>,
                              record: @escaping @Sendable ((inout MirrorState) -> Void) -> Void) async throws {
        let changes = subscribeToChanges(of: region)
        defer { changes.cancel() }
        let sent = Locked<UInt64>(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await Self.receiveAcks(on: frames, upTo: sent) { epoch in
                    record { $0.acknowledgedVersion = max($0.acknowledgedVersion, epoch) }
                }
            }
            group.addTask { [self] in
                let hasher = ChunkHasher(key: key)
                var epoch = regionEpoch.withLock { $0 }
                func announce(_ chunks: [Int]) async throws {
                    guard !chunks.isEmpty else { return }
                    epoch = regionEpoch.withLock { $0 += 1; return $0 }
                    sent.withLock { $0 = epoch }
                    record { $0.sentVersion = epoch }
                    for start in stride(from: 0, to: chunks.count, by: FrameLimits.maxDirtyChunks) {
                        let part = chunks[start..<min(start + FrameLimits.maxDirtyChunks, chunks.count)]
                        try await frames.send(.dirty(epoch: epoch, chunks: part.map { UInt64($0) }))
                    }
                }
                if let held {
                    // Holes of a sparse backing hash as zeros, untouched.
                    var holes = HoleCursor(region)
                    let differing = try (0..<region.geometry.chunkCount).filter {
                        held[$0] != hasher.hash(try holes.chunkBytes($0, of: region))
                    }
                    try Self.servable(region)
                    try await announce(differing)
                }
                try await frames.send(.synced(version: epoch))
                record { $0.synced = true }
                let trigger = followPasses(of: region, changes)
                defer { unfollowPasses(of: region, trigger) }
                while true {
                    let scan = try await trigger.wait(upTo: Self.idlePassInterval)
                    try Self.servable(region, checkingSize: true)
                    try checkStillOwned(region, as: identity)
                    let changed = scan ? changes.changedChunks() : changes.takePending()
                    // The scan read the region: what it found counts only if
                    // the backing held.
                    try Self.servable(region)
                    try await announce(changed)
                }
            }
            try await Self.firstToEnd(of: &group, on: frames)
        }
    }

    /// Initial pass (every chunk, or for a resuming mirror only those whose
    /// hash differs), SYNCED, then every change until the mirror's side ends.
    ///
    /// With `codec` (the mirror takes PAGES), each chunk is copied and
    /// encoded first (`ChunkEncoder`): a redundant one is not sent, a
    /// changed one as its differing pages, zero pages named, maybe
    /// compressed. Each pass sends the chunks that stayed clean longest
    /// first and the most often dirtied last (Silo's volatility order), so
    /// fewer are dirtied again after they were sent.
    private func publish(_ region: Region, as identity: RegionIdentity, over frames: FrameStream,
                         lanes laneOffer: (fingerprint: String, passes: Locked<[PassLanes]>)?,
                         mirrorHolds held: [ChunkHash]?, key: ChunkHashKey,
                         peer: String, codec: PageCodec?, record: @escaping @Sendable ((inout MirrorState) -> Void) -> Void) async throws {
        let changes = subscribeToChanges(of: region)
        defer { changes.cancel() }
        let sent = Locked<UInt64>(0)
        let acknowledged = Locked<UInt64>(0)
        try await withThrowingTaskGroup(of: Void.self) { [observer] group in
            group.addTask {
                try await Self.receiveAcks(on: frames, upTo: sent) { version in
                    observer?.acknowledged(region: region.name, peer: peer, version: version, at: .now)
                    acknowledged.withLock { $0 = max($0, version) }
                    record { $0.acknowledgedVersion = max($0.acknowledgedVersion, version) }
                }
            }
            group.addTask { [logger, syncedDigests, sendTaps, cuts, savings, self] in
                let hasher = ChunkHasher(key: key)
                let encoder = codec.map { ChunkEncoder(geometry: region.geometry, key: key, codec: $0) }
                var version: UInt64 = 0
                var counted = WireSavings()
                var sentBefore = [Bool](repeating: false, count: region.geometry.chunkCount)
                /// Adds what this subscription sent since the last call to the region's totals.
                func flushSavings() {
                    if let encoder {
                        counted.add(encoder.savings)
                        encoder.savings = WireSavings()
                    }
                    let delta = counted
                    counted = WireSavings()
                    savings.withLock { $0[region.name, default: WireSavings()].add(delta) }
                }
                // The plain keyed hash of an all-zero chunk, for SYNCED.
                var zeroChunkHash: (count: Int, hash: ChunkHash)?
                func expectedHash(_ bytes: UnsafeRawBufferPointer) -> ChunkHash {
                    guard encoder?.lastWasZero == true else { return hasher.hash(bytes) }
                    if let z = zeroChunkHash, z.count == bytes.count { return z.hash }
                    let h = hasher.hash([UInt8](repeating: 0, count: bytes.count))
                    zeroChunkHash = (bytes.count, h)
                    return h
                }
                // Sent and maybe not yet acknowledged, oldest first: a cut
                // names their chunks.
                var unacknowledged = Deque<(version: UInt64, chunk: Int)>()
                func pendingCut() -> SubscriptionCut? {
                    cuts.withLock { $0[region.name]?[peer] }.flatMap { $0.isAnswered ? nil : $0 }
                }
                /// Answers `cut` and pushes nothing more; ends the
                /// subscription if the cut is released.
                func park(_ cut: SubscriptionCut, remaining: ArraySlice<Int>) async throws -> Never {
                    let acked = acknowledged.withLock { $0 }
                    var stale = Set(remaining)
                    for sent in unacknowledged where sent.version > acked { stale.insert(sent.chunk) }
                    stale.formUnion(changes.changedChunks())
                    _ = cut.give(.init(stale: stale.sorted(), acknowledgedVersion: acked))
                    while !cut.isReleased { try await Task.sleep(for: .milliseconds(20)) }
                    throw ProtocolViolation(.migrationAborted, "the post-copy hand-over of '\(region.name)' was called off: "
                                            + "resubscribe")
                }
                /// Takes the next version for `chunk` and tells the observer,
                /// the tap and the mirror's state it is being sent.
                func announce(_ chunk: Int, bytes: Int) {
                    version += 1
                    observer?.willSend(region: region.name, peer: peer, chunk: chunk, bytes: bytes, version: version, at: .now)
                    if let tap = sendTaps.withLock({ $0[region.name] }) { tap(peer, chunk, bytes) }
                    sent.withLock { $0 = version }
                    let acked = acknowledged.withLock { $0 }
                    while let first = unacknowledged.first, first.version <= acked { unacknowledged.removeFirst() }
                    unacknowledged.append((version, chunk))
                    record {
                        $0.sentVersion = version
                        if $0.passPending > 0 { $0.passPending -= 1 }
                    }
                }
                var pushedSinceYield = 0
                // The pass under way goes over these (nil: the region stream only).
                var lanes: PassLanes?
                // Chunk-sized copies, held while a pass runs: a peer
                // following many idle regions holds none.
                var scratchBuffer: UnsafeMutableRawBufferPointer?
                func scratch() -> UnsafeMutableRawBufferPointer {
                    if let b = scratchBuffer { return b }
                    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: region.geometry.chunkSize, alignment: 64)
                    scratchBuffer = b
                    return b
                }
                func passEnded() {
                    scratchBuffer?.deallocate()
                    scratchBuffer = nil
                    encoder?.releaseBuffers()
                }
                defer { passEnded() }
                // The initial pass reads a hole of a sparse backing as
                // zeros without touching (and allocating) it; the tracker,
                // armed above, sees a write into it after the check.
                var holes = HoleCursor(region)
                /// Sends the chunk; with `snapshot`, from a copy whose hash
                /// goes into SYNCED's digest.
                func push(_ chunk: Int, initial: Bool = false,
                          snapshot: UnsafeMutableRawBufferPointer? = nil) async throws -> ChunkHash? {
                    let live = initial ? try holes.chunkBytes(chunk, of: region) : try region.chunkBytes(chunk)
                    // A pass over lanes goes on whichever of them moves.
                    let out = lanes?.next() ?? frames
                    counted.chunksChanged += 1
                    counted.bytesDirtied += UInt64(live.count)
                    if sentBefore[chunk] { counted.chunksResent += 1 }
                    sentBefore[chunk] = true
                    if let encoder {
                        let buffer = snapshot ?? scratch()
                        let copy = UnsafeRawBufferPointer(rebasing: buffer[..<live.count])
                        let encoded: ChunkEncoder.Encoded
                        if PageLayout.isZero(live) {
                            // Nothing to copy; the snapshot's hash (SYNCED) is the zero chunk's.
                            encoded = encoder.encodeZero(chunk, byteCount: live.count)
                        } else {
                            UnsafeMutableRawBufferPointer(rebasing: buffer[..<live.count]).copyMemory(from: live)
                            encoded = encoder.encode(chunk, copy)
                        }
                        // Read from a file truncated under us, it would be zeros.
                        try Self.servable(region)
                        if case .redundant = encoded {
                            record { if $0.passPending > 0 { $0.passPending -= 1 } }
                            return snapshot == nil ? nil : expectedHash(copy)
                        }
                        announce(chunk, bytes: live.count)
                        let wire: Int
                        switch encoded {
                        case .pages(var frame, let body):
                            frame.version = version
                            wire = try await out.sendPages(frame, body: body)
                        default:
                            wire = try await out.sendWrite(chunk: UInt64(chunk), version: version, bytes: copy)
                        }
                        await encoder.pollLink(out.stream)
                        counted.wireBytes += UInt64(wire)
                        // Zero chunks and compression can run for a long
                        // time without a send that suspends: let the READ
                        // answers sharing this pool's threads in.
                        pushedSinceYield += 1
                        if pushedSinceYield >= 8 {
                            pushedSinceYield = 0
                            await Task.yield()
                        }
                        return snapshot == nil ? nil : expectedHash(copy)
                    }
                    announce(chunk, bytes: live.count)
                    guard let snapshot else {
                        // The region is live: the transport's copy, taken here,
                        // is the snapshot it retransmits from. A write racing
                        // the copy marks the chunk changed again for the next pass.
                        counted.wireBytes += UInt64(try await out.sendWrite(chunk: UInt64(chunk), version: version, bytes: live) {
                            try Self.servable(region)
                        })
                        return nil
                    }
                    let copy = UnsafeRawBufferPointer(rebasing: snapshot[..<live.count])
                    UnsafeMutableRawBufferPointer(rebasing: snapshot[..<live.count]).copyMemory(from: live)
                    // Copied from a file truncated under us, it would be zeros.
                    try Self.servable(region)
                    counted.wireBytes += UInt64(try await out.sendWrite(chunk: UInt64(chunk), version: version, bytes: copy))
                    return hasher.hash(copy)
                }
                /// The pass about to send up to `bytes` goes over lanes if
                /// that many call for them (LANES, sent now).
                func beginPass(bytes: Int) async throws {
                    guard let laneOffer else { return }
                    // Passes whose lanes all came are forgotten already.
                    let awaiting = laneOffer.passes.withLock { passes in
                        passes.removeAll { $0.allArrived }
                        return passes.count
                    }
                    guard awaiting < Self.maxPassesAwaitingLanes else { return }
                    lanes = try await beginLanes(forPassBytes: bytes, on: frames, fingerprint: laneOffer.fingerprint)
                    if let lanes { laneOffer.passes.withLock { $0.append(lanes) } }
                }
                /// Finishes the pass's lanes; how many streams it went over.
                func endPass() async throws -> Int {
                    guard let open = lanes else { return 1 }
                    let streams = try await open.finish()
                    lanes = nil
                    record { $0.passesOverLanes += 1 }
                    return streams
                }
                var snapshot = syncedDigests ? UnsafeMutableRawBufferPointer.allocate(byteCount: region.geometry.chunkSize,
                                                                                       alignment: 64) : nil
                defer { snapshot?.deallocate() }
                var sentInitially = 0
                try await beginPass(bytes: region.geometry.size)
                // What the mirror holds once the pass is applied, chunk by chunk.
                var expected = [ChunkHash](repeating: .none, count: region.geometry.chunkCount)
                // A resuming mirror gets the chunks whose hash differs now;
                // a later write is the tracker's.
                for chunk in 0..<region.geometry.chunkCount {
                    if let held {
                        let now = hasher.hash(try holes.chunkBytes(chunk, of: region))
                        if held[chunk] == now {
                            expected[chunk] = now
                            continue
                        }
                    }
                    expected[chunk] = try await push(chunk, initial: true, snapshot: snapshot) ?? .none
                    sentInitially += 1
                    if sentInitially % 256 == 0 { flushSavings() }
                }
                flushSavings()
                snapshot?.deallocate()
                snapshot = nil
                passEnded()
                // Every lane's frames are queued ahead of its FIN: the
                // mirror applies SYNCED once it has them all.
                let streams = try await endPass()
                record { $0.passStreams = streams }
                try await frames.send(.synced(version: version, digest: syncedDigests ? RegionDigest.synced(expected) : []))
                expected = []
                record { $0.synced = true }
                logger.info("initial sync sent", metadata: [
                    "region": "\(region.name)", "chunks": "\(sentInitially) of \(region.geometry.chunkCount)",
                    "resumed": "\(held != nil)",
                ])
                // Volatility order: the pass each chunk was last found
                // changed in (0: never since the initial pass).
                var lastChanged = [UInt32](repeating: 0, count: region.geometry.chunkCount)
                var passNumber: UInt32 = 0
                let trigger = followPasses(of: region, changes)
                defer { unfollowPasses(of: region, trigger) }
                while true {
                    let scan = try await trigger.wait(upTo: Self.idlePassInterval)
                    if let cut = pendingCut() { try await park(cut, remaining: []) }
                    let began = ContinuousClock.now
                    try Self.servable(region, checkingSize: true)
                    try checkStillOwned(region, as: identity)
                    passNumber += 1
                    let found = scan ? changes.changedChunks() : changes.takePending()
                    let changed = found.sorted { (lastChanged[$0], $0) < (lastChanged[$1], $1) }
                    for chunk in changed { lastChanged[chunk] = passNumber }
                    let scanned = began.duration(to: .now).seconds
                    record {
                        $0.passPending = changed.count
                        $0.passBegan = began
                        $0.lastScanSeconds = scanned
                    }
                    try await beginPass(bytes: changed.count * region.geometry.chunkSize)
                    for (i, chunk) in changed.enumerated() {
                        if let cut = pendingCut() { try await park(cut, remaining: changed[i...]) }
                        _ = try await push(chunk)
                    }
                    if lanes != nil {
                        _ = try await endPass()
                        try await frames.send(.lanesEnd(version: version))
                    }
                    passEnded()
                    if !changed.isEmpty { flushSavings() }
                    let took = began.duration(to: .now).seconds
                    record {
                        $0.passes += 1
                        $0.lastPassBegan = began
                        $0.lastPassSeconds = took
                        $0.passBegan = nil
                    }
                }
            }
            // Whichever side ends first ends the subscription.
            try await Self.firstToEnd(of: &group, on: frames)
        }
    }
}

extension RegionExports {
    /// A pass that may send `bytes` goes over lanes when the policy says
    /// so: registered (LANE streams join it by its token), and LANES sent.
    fileprivate func beginLanes(forPassBytes bytes: Int, on frames: FrameStream, fingerprint: String) async throws -> PassLanes? {
        let count = lanePolicy.lanes(forPassBytes: bytes)
        guard count > 1 else { return nil }
        let lanes = PassLanes(count: count, main: frames, fingerprint: fingerprint)
        passLanes.withLock { $0[lanes.token] = lanes }
        do {
            try await frames.send(.lanes(count: UInt64(count), token: lanes.token))
        } catch {
            endLanes([lanes])
            throw error
        }
        return lanes
    }

    /// Forgets passes' lanes (their subscription ended): a LANE naming
    /// one now is refused.
    fileprivate func endLanes(_ lanes: [PassLanes]) {
        passLanes.withLock { all in for l in lanes { all.removeValue(forKey: l.token) } }
    }

    /// Passes of one subscription whose lanes have not all come yet: a
    /// LANE that arrives after its pass was sent is finished at once, not
    /// refused. Past this many, a subscription's passes go on its region
    /// stream only (a mirror that opens no lanes holds nothing more here).
    static let maxPassesAwaitingLanes = 16

    /// A lane stream (first frame LANE): joins the pass its token names,
    /// which must be one this peer's subscription is running. The mirror
    /// sends nothing after LANE; the pass's frames, then FIN, come back.
    public func joinLane(_ frames: FrameStream, token: [UInt8], index: UInt64, peer: PeerIdentity) async throws {
        guard let lanes = passLanes.withLock({ $0[token] }), lanes.fingerprint == peer.fingerprint else {
            throw ProtocolViolation(.unexpectedFrame, "LANE names no pass under way for this peer")
        }
        let (joining, allArrived) = lanes.join(frames, index: Int(index))
        // A pass's entry goes once all its lanes came (or its subscription ended).
        if allArrived { passLanes.withLock { _ = $0.removeValue(forKey: token) } }
        switch joining {
        case .refused:
            throw ProtocolViolation(.unexpectedFrame, "LANE \(index) of \(lanes.count) joined already, or was not asked for")
        case .passOver:
            try await frames.stream.finish()
        case .joined:
            break
        }
        guard try await frames.receive() == nil else {
            throw ProtocolViolation(.unexpectedFrame, "a mirror sends nothing after LANE")
        }
    }
}

/// Why the export table refused a change.
public enum ExportTableError: Error, CustomStringConvertible, Equatable {
    case alreadyExported(String)
    public var description: String {
        switch self {
        case .alreadyExported(let name): return "a region named '\(name)' is exported already"
        }
    }
}
