import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import DequeModule
import Foundation

/// A lazy (post-copy) replica of one region: the local mapping is usable at
/// once. The first touch of a chunk that has not arrived raises a
/// userfaultfd MISSING fault; that chunk is read from the primary on a
/// stream of its own (never behind bulk data), installed with UFFDIO_COPY,
/// and the faulting thread wakes. A background puller fills in the rest,
/// starting just past the latest fault. The primary names changed chunks in
/// DIRTY; their pages are dropped, so the next touch pulls the fresh bytes.
///
/// Faults raised while the primary is unreachable wait: they are asked for
/// again as soon as `run` is called over a new connection (`MirrorRunner`
/// reconnects with backoff), and `progress.oldestFaultWaiting` shows how
/// long the longest has waited.
public final class PostCopyMirror: @unchecked Sendable {
    public struct Options: Sendable {
        /// Fill in chunks nobody touched yet, in the background.
        public var backgroundPull = true
        /// Bytes of background READs in flight at once: the pull's
        /// bandwidth-delay product.
        public var pullWindowBytes = 16 << 20
        /// Bytes asked for in one background READ.
        public var pullBatchBytes = 1 << 20
        /// How long an attached process's read may wait on a chunk while
        /// the primary is out of reach, or while installing it keeps
        /// failing (e.g. a full tmpfs), before its session ends with an
        /// error (`AttachedRegion.failure`; `cat` exits 1). It is never
        /// handed a page of zeros instead.
        public var faultWaitLimit: Duration = .seconds(10)
        /// The copy of a region taken over after a post-copy hand-over: the
        /// source is frozen, so a DIRTY from it is a protocol violation
        /// (it would drop bytes the new owner's writers stored), and the
        /// subscription offers no hashes (what it holds is current).
        public var owner = false
        public init() {}
    }

    public struct Progress: Sendable, Equatable {
        public var chunkCount: Int
        public var chunksPresent: Int
        /// The primary answered this connection's SUBSCRIBE (and listed what
        /// changed while apart): what is present is current. False between
        /// runs, and from a run's start until its SYNCED.
        public var subscribed: Bool
        /// Page faults raised (several threads on one chunk count apiece).
        public var faults: Int
        /// Of those, the ones whose chunk has been installed.
        public var faultsServed: Int
        public var chunksInvalidated: Int
        public var lastEpoch: UInt64
        /// When the longest-waiting unserved fault was raised.
        public var oldestFaultWaiting: ContinuousClock.Instant?
        /// Chunks asked for and not yet answered: by faults, by the puller.
        public var faultReadsInFlight: Int
        public var pullReadsInFlight: Int
        /// Chunks whose bytes arrived but whose install failed, retried.
        public var installsPending: Int
        /// Why the last install failed, while any is pending.
        public var installError: String?
        /// Attached processes whose sessions were ended because their
        /// reads could not be served (primary gone, installs failing).
        public var readersFailed: Int
        /// `stop()` was called: the mapping is retired.
        public var stopped: Bool
        public var complete: Bool { chunksPresent == chunkCount }
    }

    struct State {
        var chunks: ChunkPresence
        var subscribed = false
        var faults = 0
        var faultsServed = 0
        var invalidated = 0
        var lastEpoch: UInt64 = 0
        /// The region identity the last subscription followed: epochs count
        /// within its generation.
        var identity: RegionIdentity?
        var faultLatencies: [Duration] = []
        var faultQueue: Locked<Deque<FaultRequest>>?
        var pullQueue: Locked<Deque<FaultRequest>>?
        var wakeFaultRequests: AsyncStream<Void>.Continuation?
        var wakePuller: AsyncStream<Void>.Continuation?
        /// Sends READs for faults straight from the thread that took them
        /// (over QUIC); nil when a task sends them (`wakeFaultRequests`).
        var faultRequester: FaultRequester?
        /// Bytes whose install failed, by chunk, retried with backoff while
        /// the run lasts (`ChunkPresence.holding` keeps them from being
        /// asked for again).
        var retries: [Int: (bytes: [UInt8], generation: UInt32, since: ContinuousClock.Instant)] = [:]
        var installError: String?
        var wakeRetries: AsyncStream<Void>.Continuation?
        /// Attached processes: the chunks each waits on, and how to end its
        /// session with a reason.
        var clientWaits: [Int: Set<Int>] = [:]
        var clientEnds: [Int: @Sendable (String) -> Void] = [:]
        var readersFailed = 0
        /// A run is live, or since when none is.
        var running = false
        var idleSince = ContinuousClock.now
        var stopped = false

        /// `chunk` is installed: its waiting faults are served, and no
        /// attached process waits on it any more.
        mutating func noteInstalled(_ chunk: Int) {
            if let waited = chunks.installed(chunk) {
                faultsServed += waited.faults
                if faultLatencies.count < 1 << 20 { faultLatencies.append(.now - waited.since) }
            }
            for id in clientWaits.keys { clientWaits[id]?.remove(chunk) }
        }
    }

    typealias FaultRequest = (chunk: Int, generation: UInt32)
    /// The second argument names the loop thread it is called on, if any:
    /// on the connection's own loop the READs are sent at once.
    typealias FaultRequester = @Sendable ([FaultRequest], ObjectIdentifier?) -> Void

    public let region: Region
    public let remoteName: String
    public let options: Options
    let state: Locked<State>
    /// Ends the run from another task (`end`).
    private let ending = RunEnding()
    let faults: MissingFaultHandler

    /// Registers the region's mapping for MISSING faults and drops whatever
    /// pages it holds: what a lazy replica has not pulled on this run, it
    /// does not trust.
    ///
    /// With `missing`, only those chunks are dropped and pulled: the rest of
    /// the mapping is current (a post-copy hand-over's copy; the source
    /// named every chunk it may hold stale).
    public init(region: Region, remoteName: String? = nil, options: Options = Options(), missing: [Int]? = nil) throws {
        self.region = region
        self.remoteName = remoteName ?? region.name
        self.options = options
        let count = region.geometry.chunkCount
        let state = Locked(State(chunks: missing.map { ChunkPresence(chunkCount: count, missing: $0) }
                                         ?? ChunkPresence(chunkCount: count)))
        self.state = state
        if let missing {
            // One call per run of adjacent chunks: a busy writer's list
            // covers most of the region, and each call costs microseconds.
            var run: Range<Int>?
            for chunk in Set(missing).filter({ $0 >= 0 && $0 < count }).sorted() {
                let bytes = region.geometry.byteRange(ofChunk: chunk)!
                if let r = run, r.upperBound == bytes.lowerBound {
                    run = r.lowerBound..<bytes.upperBound
                } else {
                    if let r = run { try region.discard(r) }
                    run = bytes
                }
            }
            if let r = run { try region.discard(r) }
        } else {
            try region.discard(0..<region.geometry.size)
        }
        faults = try MissingFaultHandler(region: region) { chunk, loop, client in
            let (fresh, due, requester, wake) = state.withLock {
                s -> (Bool, [FaultRequest], FaultRequester?, [AsyncStream<Void>.Continuation]) in
                guard s.chunks.faulted(chunk, at: .now) else { return (false, [], nil, []) }
                s.faults += 1
                if let client { s.clientWaits[client, default: []].insert(chunk) }
                if let requester = s.faultRequester {
                    return (true, s.chunks.takeFaultRequests(), requester, [s.wakePuller].compactMap { $0 })
                }
                return (true, [], nil, [s.wakeFaultRequests, s.wakePuller].compactMap { $0 })
            }
            if !due.isEmpty { requester?(due, loop) }
            for w in wake { w.yield() }
            return fresh
        }
        startWatchdog()
    }

    /// Retires the mapping; call once the mirror is no longer run. Attached
    /// processes' sessions end first, with the reason, so none of their
    /// threads waits on a chunk that can no longer come.
    public func stop() {
        let ends = state.withLock { s -> [@Sendable (String) -> Void] in
            s.stopped = true
            defer { s.clientEnds = [:]; s.clientWaits = [:] }
            return Array(s.clientEnds.values)
        }
        for end in ends { end("the lazy replica of '\(region.name)' stopped") }
        faults.stop()
    }

    public var progress: Progress {
        state.withLock { s in
            Progress(chunkCount: s.chunks.chunkCount, chunksPresent: s.chunks.presentCount, subscribed: s.subscribed,
                     faults: s.faults, faultsServed: s.faultsServed, chunksInvalidated: s.invalidated,
                     lastEpoch: s.lastEpoch, oldestFaultWaiting: s.chunks.waiting.values.map(\.since).min(),
                     faultReadsInFlight: s.faultQueue?.withLock { $0.count } ?? 0,
                     pullReadsInFlight: s.pullQueue?.withLock { $0.count } ?? 0,
                     installsPending: s.retries.count, installError: s.retries.isEmpty ? nil : s.installError,
                     readersFailed: s.readersFailed, stopped: s.stopped)
        }
    }

    /// Whether `chunk` is installed now (the HTTP/3 face serves only those:
    /// reading a missing one would fault and wait on the network).
    public func isChunkPresent(_ chunk: Int) -> Bool {
        state.withLock { s in !s.stopped && chunk >= 0 && chunk < s.chunks.chunkCount && s.chunks.present[chunk] }
    }

    /// Time from each served fault to its chunk's install, since the last call.
    public func takeFaultLatencies() -> [Duration] {
        state.withLock { s in defer { s.faultLatencies = [] }; return s.faultLatencies }
    }

    /// The region identity the last subscription followed.
    public var followedIdentity: RegionIdentity? { state.withLock { $0.identity } }

    /// Ends the run (now, or as soon as it starts) by resetting its region
    /// stream, which ends the others; the connection, which may carry other
    /// mirrors, stays. The mapping stays too (`stop` retires it).
    public func end() async {
        await ending.end()
    }

    /// Mirrors until the connection or a stream ends; throws why. Call again
    /// with a new connection to resume. `identity` is what the exporter's
    /// CATALOG says of the region now: another id or generation than last
    /// time restarts the epoch count, and the resume's hashes revalidate
    /// every chunk held (the primary names those that differ in DIRTY).
    public func run(over connection: any TransportConnection, identity: RegionIdentity = .fresh()) async throws {
        let control = try await subscribe(over: connection, identity: identity)
        try await ending.begin(control.stream)
        let reads = try await openReads(on: connection, mode: .reads)
        let pulls = options.backgroundPull ? try await openReads(on: connection, mode: .pull) : nil
        let (faultSignals, faultWake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let (pullSignals, pullWake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let (retrySignals, retryWake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let faultQueue = Locked(Deque<FaultRequest>())
        let loopReads = (reads.stream as? any LoopServedStream).flatMap { served in
            reads.handOverReading().map { (served, $0) }
        }
        state.withLock { s in
            s.chunks.connectionChanged()
            s.running = true
            s.wakeRetries = retryWake
            s.wakeFaultRequests = faultWake
            s.wakePuller = pulls == nil ? nil : pullWake
            s.faultQueue = faultQueue
            s.faultRequester = loopReads.map { Self.requester(on: $0.0.onLoop, queue: faultQueue) }
        }
        let loop = loopReads?.0.onLoop.loop
        let watch = loop.map { lendFaults(to: $0) }
        defer {
            endRun()
            faultWake.finish()
            pullWake.finish()
            retryWake.finish()
            if let loop, let watch { takeFaultsBack(from: loop, watch: watch) }
        }
        // Faults that waited through a reconnect are asked for first.
        requestWaitingFaults()
        pullWake.yield()
        let streams = [control, reads] + (pulls.map { [$0] } ?? [])
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.followInvalidations(control) }
                group.addTask { await self.retryInstalls(signals: retrySignals) }
                if let (served, leftover) = loopReads {
                    addLoopFaultReads(to: &group, served: served, leftover: leftover, queue: faultQueue)
                } else {
                    group.addTask { try await self.requestFaults(on: reads, queue: faultQueue, signals: faultSignals) }
                    group.addTask { try await self.receiveChunks(on: reads, queue: faultQueue, forFaults: true, onEach: nil) }
                }
                if let pulls {
                    let pullQueue = Locked(Deque<FaultRequest>())
                    state.withLock { $0.pullQueue = pullQueue }
                    group.addTask { try await self.pull(on: pulls, queue: pullQueue, signals: pullSignals) }
                    group.addTask { try await self.receiveChunks(on: pulls, queue: pullQueue, forFaults: false, onEach: pullWake) }
                }
                defer { group.cancelAll() }
                do {
                    try await group.next()
                    throw ReplicationError.streamEnded
                } catch {
                    // Say why on the region stream first, then end the
                    // others: their tasks wait in reads only a reset ends.
                    if let violation = error as? ProtocolViolation { await control.fail(violation) }
                    for frames in streams { await frames.stream.reset(errorCode: ProtocolErrorCode.noError.rawValue) }
                    throw error
                }
            }
        } catch let violation as ProtocolViolation {
            throw ReplicationError.violation(violation)
        }
    }

    /// Opens the region stream: SUBSCRIBE (naming the identity followed
    /// last, which `identity` now replaces) and the hashes of the chunks
    /// held, in HAVE frames.
    private func subscribe(over connection: any TransportConnection, identity: RegionIdentity) async throws -> FrameStream {
        let g = region.geometry
        let control = FrameStream(try await connection.openStream())
        let key = ChunkHashKey.random()
        let held = options.owner ? [] : try heldChunkHashes(key: key)
        let known = state.withLock { s -> RegionIdentity? in
            s.subscribed = false
            defer {
                if s.identity != identity { s.lastEpoch = 0 }
                s.identity = identity
            }
            return s.identity
        }
        try await control.send(.subscribe(.init(name: remoteName, size: UInt64(g.size), chunkSize: UInt64(g.chunkSize),
                                                mode: .lazy, hashedChunks: UInt64(held.count), hashKey: key.bytes,
                                                knownRegionID: known?.id ?? "", knownGeneration: known?.generation ?? 0)))
        for start in stride(from: 0, to: held.count, by: FrameLimits.maxHashesPerFrame) {
            let part = Array(held[start..<min(start + FrameLimits.maxHashesPerFrame, held.count)])
            try await control.send(.have(firstChunk: UInt64(start), hashes: part))
        }
        return control
    }

    /// Over QUIC the connection's loop reads the faults itself (ours and
    /// attached processes') and sends each READ in the same turn; the
    /// fault thread takes them back once this run ends
    /// (`takeFaultsBack`). Both steps run on the loop, in the order posted.
    /// Returns where the loop keeps its watch's token.
    private func lendFaults(to loop: any TransportEventLoop) -> Locked<UInt64?> {
        let watch = Locked<UInt64?>(nil)
        let faults = self.faults
        loop.post {
            let loopID = ObjectIdentifier(loop)
            guard let token = try? loop.watchOnLoop(faults.descriptor, handler: { faults.serveOnLoop(loopID) }) else { return }
            watch.withLock { $0 = token }
            faults.lendToLoop(true)
        }
        return watch
    }

    private func takeFaultsBack(from loop: any TransportEventLoop, watch: Locked<UInt64?>) {
        let faults = self.faults
        loop.post {
            guard let token = watch.withLock({ $0 }) else { return }
            faults.lendToLoop(false)
            loop.unwatchOnLoop(token)
        }
    }

    /// The run is over: nothing wakes its tasks any more.
    private func endRun() {
        state.withLock { s in
            s.wakeFaultRequests = nil; s.wakePuller = nil; s.faultRequester = nil; s.faultQueue = nil; s.pullQueue = nil
            s.wakeRetries = nil
            s.running = false
            s.idleSince = .now
            // Not current from here on: the primary may write on without
            // us. `subscribed` stays false until the next run's SYNCED,
            // which follows the DIRTY naming what changed meanwhile.
            s.subscribed = false
            // Held bytes may go stale while nobody follows DIRTY: the
            // next run asks for those chunks afresh.
            for chunk in s.retries.keys { _ = s.chunks.invalidate(chunk) }
            s.retries = [:]
        }
    }

    /// Fault reads over QUIC: the loop reads faults and sends READs, and
    /// installs DATA.
    private func addLoopFaultReads(to group: inout ThrowingTaskGroup<Void, any Error>, served: any LoopServedStream,
                                   leftover: [UInt8], queue: Locked<Deque<FaultRequest>>) {
        let reader = LoopFrameReader(leftover: leftover) { [self] frame, stream in
            if try accept(frame, queue: queue, forFaults: true) {
                requestWaitingFaults(onLoop: ObjectIdentifier(stream.loop))
            }
            // Every fault READ answered: the loop need not poll for DATA,
            // and the faulting thread it just woke gets the CPU.
            if queue.withLock({ $0.isEmpty }) { stream.loop.answersArrived() }
            return nil
        }
        group.addTask {
            try await served.readOnLoop(reader)
            throw ReplicationError.streamEnded
        }
    }

    private func openReads(on connection: any TransportConnection, mode: Frame.Subscribe.Mode) async throws -> FrameStream {
        let g = region.geometry
        let frames = FrameStream(try await connection.openStream())
        try await frames.send(.subscribe(.init(name: remoteName, size: UInt64(g.size), chunkSize: UInt64(g.chunkSize),
                                               mode: mode)))
        return frames
    }

    /// For a resume: hashes of the chunks held, read from the file so that
    /// no fault is raised; 0 for a missing chunk (it is pulled anyway).
    private func heldChunkHashes(key: ChunkHashKey) throws -> [ChunkHash] {
        let present = state.withLock { $0.chunks.present }
        guard present.contains(true) else { return [] }
        let hasher = ChunkHasher(key: key)
        return try (0..<present.count).map { chunk in
            guard present[chunk] else { return .none }
            return hasher.hash(try region.readChunkFromFile(chunk))
        }
    }

    private func followInvalidations(_ control: FrameStream) async throws {
        let chunkCount = UInt64(region.geometry.chunkCount)
        while let frame = try await control.receive() {
            switch frame {
            case .synced:
                let wake = state.withLock { s -> AsyncStream<Void>.Continuation? in
                    s.subscribed = true
                    return s.wakePuller
                }
                wake?.yield()
            case .dirty where options.owner:
                throw ProtocolViolation(.unexpectedFrame, "the source of a post-copy hand-over sent DIRTY: its region "
                                        + "must stay frozen until the new owner holds every chunk")
            case .dirty(let epoch, let chunks):
                guard let last = chunks.last, last < chunkCount else {
                    throw ProtocolViolation(.chunkOutOfRange, "DIRTY names chunk \(chunks.last ?? 0) of a \(chunkCount)-chunk region")
                }
                let wake = try state.withLock { s -> AsyncStream<Void>.Continuation? in
                    guard epoch >= s.lastEpoch else {
                        throw ProtocolViolation(.versionWentBackwards, "DIRTY epoch \(epoch) after \(s.lastEpoch)")
                    }
                    s.lastEpoch = epoch
                    for chunk in chunks.map({ Int($0) }) where s.chunks.invalidate(chunk) {
                        try region.discard(region.geometry.byteRange(ofChunk: chunk)!)
                        s.invalidated += 1
                    }
                    return s.wakePuller
                }
                wake?.yield()
                if !control.hasBufferedBytes { try await control.send(.ack(version: epoch)) }
            case .error(let code, let message):
                throw ReplicationError.refusedByPeer(code: code, message: message)
            default:
                throw ProtocolViolation(.unexpectedFrame, "a primary sends DIRTY, SYNCED or ERROR to a lazy mirror")
            }
        }
        throw ReplicationError.streamEnded
    }
}
