import MemReplicaSystem
import Logging

/// The one dirty tracker of a region in this process, shared by everything
/// that follows the region's changes (each mirror's subscription).
///
/// Why one per region: a tracker reads and resets, so two consumers of one
/// tracker would each see only part of the writes; and the userfaultfd
/// tracker cannot be doubled, since a second registration of the same
/// range fails with EBUSY. Why per region and not per `RegionExports`:
/// registration belongs to the mapping, which several exports objects may
/// share (the sync benchmark makes one per run, while the last run's
/// subscription may still be ending).
///
/// So the first subscription selects and arms the tracker, the last one to
/// go closes it (it is disarmed while no mirror follows the region; a new
/// subscription starts with a full or hash-compared initial pass anyway).
/// Whichever subscription scans, the result is fanned out: every other
/// subscription's pending set gets the chunks, and each takes its own set
/// on its next poll. A subscription thus learns of every chunk written
/// after it subscribed, at least once.
///
/// Should a scan fail, the tracker can no longer be trusted (the kernel
/// may have reset pages before failing): the feed switches to hashing and
/// reports every chunk to every subscription once.
public final class RegionChangeFeed: Sendable {
    public let region: Region
    private let logger: Logger
    private let state: Locked<State>

    private struct State {
        var tracker: (any DirtyTracker)?
        var kind: DirtyTrackerKind
        var reason: String
        var pending: [Int: PendingChunks] = [:]
        var nextID = 0
        var lastStatistics = DirtyScanStatistics()
    }

    /// Live feeds by region identity (a feed holds its region, so the
    /// identity is not reused while the entry exists).
    private static let registry = Locked<[ObjectIdentifier: RegionChangeFeed]>([:])

    /// Exact trackers of other processes' mappings (attached writers), by
    /// region identity, then attachment id. They live independently of
    /// feeds: a writer attaches whether or not a mirror follows the region,
    /// and every scan of the region's feed scans them too. Lock order:
    /// `registry`, a feed's `state`, then `writers`.
    private static let writers = Locked<[ObjectIdentifier: [Int: WriterEntry]]>([:])
    private static let nextWriterID = Locked(0)

    private struct WriterEntry: @unchecked Sendable {
        let tracker: any DirtyTracker
        let region: Region
    }

    /// At most this many attached writers per region.
    public static let maxWritersPerRegion = 16

    /// Adds an attached process's exact tracker to `region`'s scans. Its
    /// first scan proves it works and what it finds is reported (the
    /// process wrote before attaching). Returns the id for `detachWriter`.
    static func attachWriter(_ tracker: any DirtyTracker, to region: Region) throws -> Int {
        let key = ObjectIdentifier(region)
        return try registry.withLock { feeds in
            let count = writers.withLock { $0[key]?.count ?? 0 }
            guard count < maxWritersPerRegion else {
                throw WriteProtectTracker.Failure(step: "attaching", errno: nil,
                                                  detail: "too many attached writers (at most \(maxWritersPerRegion))")
            }
            let first = try tracker.changedChunks()
            let id = nextWriterID.withLock { $0 += 1; return $0 }
            if let feed = feeds[key] {
                feed.state.withLock { s in
                    for k in s.pending.keys { s.pending[k]!.insert(first) }
                    writers.withLock { $0[key, default: [:]][id] = WriterEntry(tracker: tracker, region: region) }
                }
            } else {
                writers.withLock { $0[key, default: [:]][id] = WriterEntry(tracker: tracker, region: region) }
            }
            return id
        }
    }

    /// Ends an attached writer's tracking: a last scan hands what it wrote
    /// to every subscriber. Should that scan fail (the process is gone and
    /// its page tables with it), every chunk is reported: its last writes
    /// are unknown, and a miss must never be silent.
    static func detachWriter(_ id: Int, from region: Region) {
        let key = ObjectIdentifier(region)
        registry.withLock { feeds in
            let feed = feeds[key]
            let finish = { () -> [Int] in
                guard let entry = writers.withLock({ w -> WriterEntry? in
                    defer { w[key]?[id] = nil; if w[key]?.isEmpty == true { w[key] = nil } }
                    return w[key]?[id]
                }) else { return [] }
                return (try? entry.tracker.changedChunks()) ?? Array(0..<region.geometry.chunkCount)
            }
            if let feed {
                feed.state.withLock { s in
                    let last = finish()
                    for k in s.pending.keys { s.pending[k]!.insert(last) }
                }
            } else {
                _ = finish()
            }
        }
    }

    /// Attached writers of `region` now.
    public static func attachedWriters(of region: Region) -> Int {
        writers.withLock { $0[ObjectIdentifier(region)]?.count ?? 0 }
    }

    private init(region: Region, selection: DirtyTrackerSelection, logger: Logger) {
        self.region = region
        self.logger = logger
        state = Locked(State(tracker: selection.tracker, kind: selection.kind, reason: selection.reason))
    }

    /// Follows `region`'s changes from now on: the region's tracker is armed
    /// (selected now if nobody follows the region yet) before this returns.
    public static func subscribe(to region: Region, logger: Logger) -> ChangeSubscription {
        subscribe(to: region, logger: logger) { DirtyTrackerSelection.select(for: region) }
    }

    /// As above with a given tracker when the region has no feed yet (tests).
    static func subscribe(to region: Region, logger: Logger,
                          select: () -> DirtyTrackerSelection) -> ChangeSubscription {
        registry.withLock { feeds in
            let key = ObjectIdentifier(region)
            let feed = feeds[key] ?? RegionChangeFeed(region: region, selection: select(), logger: logger)
            feeds[key] = feed
            return ChangeSubscription(feed: feed, id: feed.addSubscriber())
        }
    }

    /// The region's tracking now, or nil when nobody follows it.
    public static func status(of region: Region) -> DirtyTrackingStatus? {
        registry.withLock { $0[ObjectIdentifier(region)] }?.status
    }

    public var status: DirtyTrackingStatus {
        state.withLock {
            DirtyTrackingStatus(kind: $0.kind, reason: $0.reason, subscribers: $0.pending.count,
                                statistics: $0.tracker?.statistics ?? $0.lastStatistics)
        }
    }

    private func addSubscriber() -> Int {
        state.withLock {
            $0.nextID += 1
            $0.pending[$0.nextID] = PendingChunks(chunkCount: region.geometry.chunkCount)
            return $0.nextID
        }
    }

    func unsubscribe(_ id: Int) {
        Self.registry.withLock { feeds in
            let empty = state.withLock { s -> Bool in
                s.pending[id] = nil
                guard s.pending.isEmpty else { return false }
                // Closes the tracker (a userfaultfd is unregistered) now,
                // not whenever the feed object goes away.
                if let t = s.tracker { s.lastStatistics = t.statistics }
                s.tracker = nil
                return true
            }
            if empty, feeds[ObjectIdentifier(region)] === self {
                feeds[ObjectIdentifier(region)] = nil
            }
        }
    }

    /// Scans, hands the result to every other subscriber, and returns what
    /// subscriber `id` has not taken yet, ascending.
    func changedChunks(for id: Int) -> [Int] {
        state.withLock { s -> [Int] in
            guard s.tracker != nil, s.pending[id] != nil else { return [] }
            let scanned = scan(&s)
            for other in s.pending.keys where other != id {
                s.pending[other]!.insert(scanned)
            }
            if s.pending[id]!.isEmpty { return scanned }
            s.pending[id]!.insert(scanned)
            return s.pending[id]!.takeAll()
        }
    }

    /// Scans and hands the result to every subscriber (`ScanClock`'s tick).
    func scanForAll() {
        state.withLock { s in
            guard s.tracker != nil, !s.pending.isEmpty else { return }
            let scanned = scan(&s)
            guard !scanned.isEmpty else { return }
            for other in s.pending.keys { s.pending[other]!.insert(scanned) }
        }
    }

    /// Whether subscriber `id` has chunks to take.
    func hasPending(for id: Int) -> Bool {
        state.withLock { !($0.pending[id]?.isEmpty ?? true) }
    }

    /// What subscriber `id` has not taken yet, ascending, without a scan.
    func takePending(for id: Int) -> [Int] {
        state.withLock { $0.pending[id]?.takeAll() ?? [] }
    }

    /// One scan of the tracker and of attached writers' trackers, ascending.
    private func scan(_ s: inout State) -> [Int] {
        guard let tracker = s.tracker else { return [] }
        let chunkCount = region.geometry.chunkCount
        var scanned: [Int]
        do {
            scanned = try tracker.changedChunks()
        } catch Region.Failure.unavailable {
            // The region itself failed, not the tracker: nothing is
            // served from it any more (each subscription's pass says why).
            return []
        } catch {
            logger.error("dirty tracker failed: hashing from now on, every chunk is sent again",
                         metadata: ["region": "\(region.name)", "tracker": "\(s.kind)", "error": "\(error)"])
            s.lastStatistics = tracker.statistics
            s.tracker = ChunkHashScanner(region: region)
            s.kind = .hashScan
            s.reason = "the \(tracker.kind) tracker failed (\(error)): hashing instead"
            scanned = Array(0..<chunkCount)
        }
        // Attached writers' mappings: their trackers are exact for their
        // own stores; one that fails reports every chunk, once.
        let key = ObjectIdentifier(region)
        for (writerID, entry) in Self.writers.withLock({ $0[key] ?? [:] }) {
            do {
                scanned += try entry.tracker.changedChunks()
            } catch {
                logger.error("an attached writer's tracker failed: every chunk is sent again",
                             metadata: ["region": "\(region.name)", "error": "\(error)"])
                Self.writers.withLock { $0[key]?[writerID] = nil }
                scanned = Array(0..<chunkCount)
            }
        }
        return scanned.count < 2 ? scanned : Array(Set(scanned)).sorted()
    }
}
