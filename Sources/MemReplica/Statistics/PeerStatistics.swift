import MemReplicaSystem
import MemReplicaTransportCore
import DequeModule

/// What one peer counts about its own replication, fed as things happen:
/// the primary's sends and its mirrors' ACKs (as the region exports'
/// `ReplicationObserver`), READs served, connections made, and samples
/// the peer takes each second (fault latencies, dirty-scan totals).
/// Owned by the peer (`PeerService.statistics`), never global, so two
/// peers in one process (as in tests) count apart.
public final class PeerStatistics: ReplicationObserver {
    /// The latency measures kept per region.
    public enum Measure: String, Sendable, CaseIterable {
        /// Primary: a chunk version's copy for sending to the mirror's ACK of it.
        case replicationLag
        /// Lazy replica: a page fault to its chunk's install.
        case faultLatency
        /// Primary: a READ's arrival to its DATA queued.
        case readLatency
    }

    /// Chunks and bytes moved for one region, by what moved them.
    public struct Transfers: Sendable, Equatable {
        /// Primary: WRITEs sent to mirrors (the initial sync and changes).
        public var chunksPushed: UInt64 = 0
        public var bytesPushed: UInt64 = 0
        /// Primary: chunks sent as DATA in answer to lazy mirrors' READs.
        public var chunksPulled: UInt64 = 0
        public var bytesPulled: UInt64 = 0
    }

    /// Sends a mirror has not acknowledged yet are remembered up to this
    /// many (an initial sync of a 64 GiB region in 64 KiB chunks); beyond,
    /// the oldest are forgotten and their lag goes unmeasured.
    public static let pendingLimit = 1 << 20
    /// The dirty rate is the change of the scans' total over this long.
    public static let dirtyRateWindow: Duration = .seconds(10)

    public let slots: Int
    public let slotDuration: Duration
    private let clock: @Sendable () -> ContinuousClock.Instant
    /// The Prometheus series, when the peer serves them.
    public let metrics: PrometheusStatistics?
    private let state = Locked(State())

    private struct MirrorKey: Hashable { var region: String; var peer: String }
    private struct MeasureKey: Hashable { var measure: Measure; var region: String }
    private struct ConnectionKey: Hashable { var fingerprint: String; var initiatedLocally: Bool }
    private struct Send { var version: UInt64; var at: ContinuousClock.Instant }
    private struct DirtySample { var at: ContinuousClock.Instant; var total: Int }

    private struct State {
        var transfers: [String: Transfers] = [:]
        var pending: [MirrorKey: Deque<Send>] = [:]
        var histograms: [MeasureKey: LatencyHistogram] = [:]
        var dirty: [String: Deque<DirtySample>] = [:]
        var connections: [ConnectionKey: Int] = [:]
    }

    /// `metrics`, when given, also hears every latency sample (for its
    /// Prometheus histograms). The window is `slots` × `slotDuration`.
    public init(slots: Int = 6, slotDuration: Duration = .seconds(10), metrics: PrometheusStatistics? = nil,
                clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.slots = slots
        self.slotDuration = slotDuration
        self.metrics = metrics
        self.clock = clock
    }

    // MARK: Events

    /// Says neither which mirror nor how many bytes, so there is nothing
    /// to count: `RegionExports` calls the form below, which does.
    public func willSend(region: String, chunk: Int, version: UInt64, at: ContinuousClock.Instant) {}

    public func willSend(region: String, peer: String, chunk: Int, bytes: Int, version: UInt64, at: ContinuousClock.Instant) {
        state.withLock { s in
            s.transfers[region, default: Transfers()].chunksPushed += 1
            s.transfers[region, default: Transfers()].bytesPushed += UInt64(bytes)
            let key = MirrorKey(region: region, peer: peer)
            var sends = s.pending[key] ?? []
            // Versions restart at 1 with each subscription: an old one's
            // unacknowledged sends will never be acknowledged now.
            if let last = sends.last, version <= last.version { sends.removeAll() }
            sends.append(Send(version: version, at: at))
            if sends.count > Self.pendingLimit { sends.removeFirst() }
            s.pending[key] = sends
        }
    }

    public func acknowledged(region: String, peer: String, version: UInt64, at: ContinuousClock.Instant) {
        let lags = state.withLock { s -> [Duration] in
            let key = MirrorKey(region: region, peer: peer)
            guard var sends = s.pending[key] else { return [] }
            var lags: [Duration] = []
            while let first = sends.first, first.version <= version {
                lags.append(first.at.duration(to: at))
                sends.removeFirst()
            }
            s.pending[key] = sends
            return lags
        }
        for lag in lags { record(.replicationLag, region: region, lag) }
    }

    public func servedRead(region: String, peer: String, chunks: Int, bytes: Int, duration: Duration) {
        state.withLock { s in
            s.transfers[region, default: Transfers()].chunksPulled += UInt64(chunks)
            s.transfers[region, default: Transfers()].bytesPulled += UInt64(bytes)
        }
        record(.readLatency, region: region, duration)
    }

    /// A latency sample of `measure` for `region`.
    public func record(_ measure: Measure, region: String, _ latency: Duration) {
        histogram(measure, region: region).record(latency)
        metrics?.record(measure, region: region, latency)
    }

    /// A connection with the peer whose certificate has `fingerprint` was
    /// established, by us (`initiatedLocally`) or by it.
    public func connectionEstablished(fingerprint: String, initiatedLocally: Bool) {
        state.withLock { $0.connections[ConnectionKey(fingerprint: fingerprint, initiatedLocally: initiatedLocally), default: 0] += 1 }
    }

    /// A region's dirty tracker has reported `total` changed chunks so far.
    public func sampleDirty(region: String, total: Int) {
        let now = clock()
        state.withLock { s in
            var samples = s.dirty[region] ?? []
            // A fewer total means a new tracker (the last mirror left and
            // one came back): its count starts again.
            if let last = samples.last, total < last.total { samples.removeAll() }
            samples.append(DirtySample(at: now, total: total))
            while let first = samples.first, first.at.duration(to: now) > Self.dirtyRateWindow { samples.removeFirst() }
            s.dirty[region] = samples
        }
    }

    // MARK: Readings

    public func transfers(region: String) -> Transfers {
        state.withLock { $0.transfers[region] ?? Transfers() }
    }

    public func latency(_ measure: Measure, region: String) -> LatencySummary? {
        state.withLock { $0.histograms[MeasureKey(measure: measure, region: region)] }?.summary()
    }

    /// How long the oldest version sent to `peer` has gone unacknowledged;
    /// zero when it has acknowledged everything.
    public func timeLag(region: String, peer: String) -> Duration {
        let now = clock()
        return state.withLock { s in
            s.pending[MirrorKey(region: region, peer: peer)]?.first.map { $0.at.duration(to: now) } ?? .zero
        }
    }

    /// Changed chunks per second over the last `dirtyRateWindow`, nil
    /// before two samples.
    public func dirtyRate(region: String) -> Double? {
        state.withLock { s in
            guard let samples = s.dirty[region], let first = samples.first, let last = samples.last else { return nil }
            let span = first.at.duration(to: last.at).seconds
            return span > 0 ? Double(last.total - first.total) / span : nil
        }
    }

    /// Connections with that peer, in that direction, after the first.
    public func reconnects(fingerprint: String, initiatedLocally: Bool) -> Int {
        state.withLock { max(0, ($0.connections[ConnectionKey(fingerprint: fingerprint, initiatedLocally: initiatedLocally)] ?? 0) - 1) }
    }

    private func histogram(_ measure: Measure, region: String) -> LatencyHistogram {
        state.withLock { s in
            let key = MeasureKey(measure: measure, region: region)
            if let existing = s.histograms[key] { return existing }
            let made = LatencyHistogram(slots: slots, slotDuration: slotDuration, clock: clock)
            s.histograms[key] = made
            return made
        }
    }
}
