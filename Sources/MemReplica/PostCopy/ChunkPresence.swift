import BitCollections

/// What a lazy replica holds of each chunk, and what it has asked for.
///
/// Every DIRTY bumps a chunk's generation. A READ remembers the generation
/// it was sent at; DATA that comes back after the chunk was invalidated is
/// dropped (it may predate the change), and the chunk is asked for again.
/// Reads and invalidations are on different streams, so this, not arrival
/// order, is what keeps a replica from installing stale bytes.
struct ChunkPresence {
    /// Kept as `[Bool]`: the mirror reads it as one (`present[chunk]`, and
    /// a copy of the whole for a snapshot).
    private(set) var present: [Bool]
    private(set) var generation: [UInt32]
    private(set) var presentCount = 0
    /// Chunks a thread faulted on and that are not installed yet: when the
    /// first fault was raised, and how many faults wait on it.
    private(set) var waiting: [Int: (since: ContinuousClock.Instant, faults: Int)] = [:]
    /// READs in flight on the current connection, per reads stream. A fault
    /// on a chunk the puller asked for still gets a READ of its own: the
    /// puller's answer may be queued behind megabytes of others.
    private var requestedByFault: BitSet
    private var requestedByPull: BitSet
    /// Chunks whose current bytes arrived but could not be installed yet
    /// (UFFDIO_COPY failed, e.g. a full tmpfs): retried, never asked for again.
    private(set) var holding: BitSet
    /// Where the background puller looks next: just past the latest fault.
    private var pullCursor = 0

    init(chunkCount: Int) {
        present = [Bool](repeating: false, count: chunkCount)
        generation = [UInt32](repeating: 0, count: chunkCount)
        requestedByFault = BitSet(reservingCapacity: chunkCount)
        requestedByPull = BitSet(reservingCapacity: chunkCount)
        holding = BitSet(reservingCapacity: chunkCount)
    }

    /// Every chunk present except `missing` (a copy taken over after a
    /// post-copy hand-over: what it held is current, the rest is pulled).
    init(chunkCount: Int, missing: some Sequence<Int>) {
        self.init(chunkCount: chunkCount)
        present = [Bool](repeating: true, count: chunkCount)
        for chunk in missing where chunk >= 0 && chunk < chunkCount { present[chunk] = false }
        presentCount = present.lazy.filter { $0 }.count
    }

    var chunkCount: Int { present.count }
    var isComplete: Bool { presentCount == present.count }

    /// A thread touched a missing page of `chunk`. False when the chunk is
    /// present after all (installed since the fault was raised).
    mutating func faulted(_ chunk: Int, at now: ContinuousClock.Instant) -> Bool {
        pullCursor = chunk
        guard !present[chunk] else { return false }
        waiting[chunk, default: (now, 0)].faults += 1
        return true
    }

    /// Faulted chunks to READ now, with the generation each is asked at.
    mutating func takeFaultRequests() -> [(chunk: Int, generation: UInt32)] {
        let due = waiting.keys.filter { !requestedByFault.contains($0) && !present[$0] && !holding.contains($0) }.sorted()
        requestedByFault.formUnion(due)
        return due.map { ($0, generation[$0]) }
    }

    /// The next run of up to `limit` consecutive missing chunks nobody asked
    /// for, searching from the cursor and wrapping; nil when there is none.
    mutating func takePullRun(limit: Int) -> [(chunk: Int, generation: UInt32)]? {
        guard !isComplete, limit > 0 else { return nil }
        let n = present.count
        var start: Int?
        for step in 0..<n {
            let c = (pullCursor + step) % n
            if !present[c] && !isRequested(c) { start = c; break }
        }
        guard let first = start else { return nil }
        var run: [(chunk: Int, generation: UInt32)] = []
        var c = first
        while c < n, run.count < limit, !present[c], !isRequested(c) {
            run.append((c, generation[c]))
            requestedByPull.insert(c)
            c += 1
        }
        pullCursor = c % n
        return run
    }

    enum Arrival: Equatable {
        /// Install these bytes: the chunk is missing and they are current.
        case install
        /// Present already (a fault and the puller both asked): nothing to do.
        case alreadyPresent
        /// Invalidated while the READ was in flight: drop the bytes.
        case stale
        /// Current bytes for it are held for an install retry already.
        case held
    }

    private func isRequested(_ chunk: Int) -> Bool {
        requestedByFault.contains(chunk) || requestedByPull.contains(chunk) || holding.contains(chunk)
    }

    /// The chunk's bytes are in hand but its install failed: hold them for a
    /// retry instead of asking the primary again.
    mutating func installFailed(_ chunk: Int) {
        holding.insert(chunk)
    }

    /// Whether bytes held for `chunk` at `generation` may still be installed.
    func mayInstallHeld(_ chunk: Int, generation askedAt: UInt32) -> Bool {
        holding.contains(chunk) && generation[chunk] == askedAt && !present[chunk]
    }

    /// DATA for `chunk`, asked for at `askedAt` by a fault or the puller,
    /// has arrived.
    mutating func arrived(_ chunk: Int, askedAt: UInt32, forFault: Bool) -> Arrival {
        if forFault { requestedByFault.remove(chunk) } else { requestedByPull.remove(chunk) }
        guard generation[chunk] == askedAt else { return .stale }
        if present[chunk] { return .alreadyPresent }
        // A retry holds the same bytes already.
        return holding.contains(chunk) ? .held : .install
    }

    /// Forgets the faults waiting on `chunks` (their readers were told it
    /// failed); returns how many there were.
    mutating func dropWaiting(_ chunks: some Sequence<Int>) -> Int {
        var dropped = 0
        for chunk in chunks { dropped += waiting.removeValue(forKey: chunk)?.faults ?? 0 }
        return dropped
    }

    /// The chunk's bytes are in the mapping. Returns when its first fault
    /// was raised and how many faults it served, if a thread was waiting.
    mutating func installed(_ chunk: Int) -> (since: ContinuousClock.Instant, faults: Int)? {
        holding.remove(chunk)
        if !present[chunk] {
            present[chunk] = true
            presentCount += 1
        }
        return waiting.removeValue(forKey: chunk)
    }

    /// DIRTY named `chunk`: true when its pages must be dropped.
    mutating func invalidate(_ chunk: Int) -> Bool {
        generation[chunk] &+= 1
        // Held bytes are stale now: the chunk is asked for afresh.
        holding.remove(chunk)
        guard present[chunk] else { return false }
        present[chunk] = false
        presentCount -= 1
        return true
    }

    /// A new connection: nothing is in flight any more.
    mutating func connectionChanged() {
        requestedByFault = BitSet(reservingCapacity: chunkCount)
        requestedByPull = BitSet(reservingCapacity: chunkCount)
    }
}
