import MemReplicaSystem
import MemReplicaTransportCore
import CoreMetrics
import Prometheus

/// A peer's statistics as Prometheus series. The metrics are swift-metrics
/// objects made by a `PrometheusMetricsFactory` over a registry of this
/// peer's own, passed explicitly: `MetricsSystem.bootstrap` would make the
/// registry process-wide, and two peers in one process (tests) would then
/// report into each other's series.
///
/// Latency histograms are fed as samples happen (`record`); everything else
/// is a reading of the peer's state, copied in by `update(from:)` once a
/// second, so a scrape shows values at most that old. Names and units
/// follow Prometheus conventions: base units (seconds, bytes), `_total`
/// for counters.
public final class PrometheusStatistics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let state = Locked(State())

    /// Histogram buckets from 50 µs (loopback) to 10 s (a WAN path in trouble).
    public static let latencyBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
        .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
    ]

    /// A series: a metric name and its label values, in a fixed order.
    private struct SeriesKey: Hashable {
        var name: String
        var labels: [String]
    }

    private struct State {
        var gauges: [SeriesKey: CoreMetrics.Gauge] = [:]
        /// Counters copied from a running total: the total seen last time,
        /// so each update adds only what is new.
        var counters: [SeriesKey: (counter: CoreMetrics.FloatingPointCounter, last: Double)] = [:]
        var timers: [SeriesKey: CoreMetrics.Timer] = [:]
    }

    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = Self.latencyBuckets
        self.factory = factory
    }

    /// The text exposition format (version 0.0.4) of every series.
    public func exposition() -> [UInt8] { registry.emitToBuffer() }

    /// A latency sample, into `memreplica_replication_lag_seconds`,
    /// `memreplica_fault_latency_seconds` or `memreplica_read_latency_seconds`.
    public func record(_ measure: PeerStatistics.Measure, region: String, _ latency: Duration) {
        timer(Self.histogramName(measure), [("region", region)]).recordNanoseconds(Int64(LatencyHistogram.nanoseconds(latency)))
    }

    static func histogramName(_ measure: PeerStatistics.Measure) -> String {
        switch measure {
        case .replicationLag: "memreplica_replication_lag_seconds"
        case .faultLatency: "memreplica_fault_latency_seconds"
        case .readLatency: "memreplica_read_latency_seconds"
        }
    }

    /// Copies a report's readings into the series, and samples each
    /// connection's latest RTT into `memreplica_rtt_seconds`. Series of
    /// connections and mirrors that are gone are removed.
    public func update(from report: StatsReport) {
        var seen = Set<SeriesKey>()
        func gauge(_ name: String, _ labels: [(String, String)], _ value: Double) {
            seen.insert(Self.key(name, labels))
            self.gauge(name, labels).record(value)
        }
        func counter(_ name: String, _ labels: [(String, String)], _ total: Double) {
            seen.insert(Self.key(name, labels))
            self.counter(name, labels, total: total)
        }
        gauge("memreplica_uptime_seconds", [], report.uptimeSeconds)
        for c in report.connections {
            let labels = [("peer", c.peer), ("remote", c.remoteAddress), ("direction", c.initiatedLocally ? "out" : "in")]
            // Info-style: the controller is a label, the value always 1.
            gauge("memreplica_connection_info", labels + [("congestion_control", c.congestionControl)], 1)
            gauge("memreplica_latest_rtt_seconds", labels, c.latestRTTSeconds)
            gauge("memreplica_min_rtt_seconds", labels, c.minRTTSeconds)
            gauge("memreplica_smoothed_rtt_seconds", labels, c.smoothedRTTSeconds)
            gauge("memreplica_rtt_variance_seconds", labels, c.rttVarianceSeconds)
            gauge("memreplica_congestion_window_bytes", labels, Double(c.congestionWindowBytes))
            gauge("memreplica_in_flight_bytes", labels, Double(c.bytesInFlight))
            gauge("memreplica_delivery_rate_bytes_per_second", labels, Double(c.deliveryRateBytesPerSecond))
            gauge("memreplica_pto_count", labels, Double(c.ptoCount))
            if let handshake = c.handshakeSeconds { gauge("memreplica_handshake_seconds", labels, handshake) }
            counter("memreplica_sent_bytes_total", labels, Double(c.bytesSent))
            counter("memreplica_received_bytes_total", labels, Double(c.bytesReceived))
            counter("memreplica_sent_packets_total", labels, Double(c.packetsSent))
            counter("memreplica_received_packets_total", labels, Double(c.packetsReceived))
            if let held = c.bulkQueueHeldSeconds { counter("memreplica_bulk_queue_held_seconds_total", labels, held) }
            // Per peer and direction: it outlives each connection.
            counter("memreplica_reconnects_total", [("peer", c.peer), ("direction", c.initiatedLocally ? "out" : "in")],
                    Double(c.reconnects))
            if c.latestRTTSeconds > 0 {
                timer("memreplica_rtt_seconds", [("peer", c.peer)]).recordNanoseconds(Int64(c.latestRTTSeconds * 1e9))
            }
        }
        for r in report.regions {
            let labels = [("region", r.name), ("role", r.role)]
            if let v = r.chunksPushed { counter("memreplica_pushed_chunks_total", labels, Double(v)) }
            if let v = r.bytesPushed { counter("memreplica_pushed_bytes_total", labels, Double(v)) }
            if let v = r.chunksPulled { counter("memreplica_pulled_chunks_total", labels, Double(v)) }
            if let v = r.bytesPulled { counter("memreplica_pulled_bytes_total", labels, Double(v)) }
            if let scan = r.scan {
                counter("memreplica_dirty_chunks_total", labels, Double(scan.changedChunks))
                counter("memreplica_scans_total", labels, Double(scan.scans))
                counter("memreplica_scan_seconds_total", labels, scan.totalSeconds)
            }
            if let w = r.wire {
                counter("memreplica_dirtied_bytes_total", labels, Double(w.bytesDirtied))
                counter("memreplica_wire_bytes_total", labels, Double(w.wireBytes))
                gauge("memreplica_wire_ratio", labels, w.wireRatio)
                counter("memreplica_redundant_chunks_total", labels, Double(w.redundantChunks))
                counter("memreplica_zero_chunks_total", labels, Double(w.zeroChunks))
                counter("memreplica_zero_pages_total", labels, Double(w.zeroPages))
                counter("memreplica_delta_chunks_total", labels, Double(w.deltaChunks))
                counter("memreplica_resent_chunks_total", labels, Double(w.chunksResent))
                counter("memreplica_compression_input_bytes_total", labels, Double(w.compressionInputBytes))
                counter("memreplica_compression_output_bytes_total", labels, Double(w.compressionOutputBytes))
                counter("memreplica_compression_seconds_total", labels, w.compressionSeconds)
            }
            if let v = r.faults { counter("memreplica_faults_total", labels, Double(v)) }
            if let v = r.reconnects { counter("memreplica_mirror_reconnects_total", labels, Double(v)) }
            for m in r.replicas ?? [] {
                let mirror = [("region", r.name), ("replica", m.peer)]
                gauge("memreplica_replica_version_lag", mirror, Double(m.versionLag))
                gauge("memreplica_replica_time_lag_seconds", mirror, m.timeLagSeconds)
            }
        }
        for m in report.migrations ?? [] {
            let labels = [("region", m.region)]
            for (outcome, n) in m.outcomes {
                counter("memreplica_migrations_total", labels + [("outcome", outcome)], Double(n))
            }
            gauge("memreplica_migration_running", labels, m.running == nil ? 0 : 1)
            if let p = m.running {
                gauge("memreplica_migration_pending_bytes", labels, Double(p.pendingBytes))
                if let e = p.estimatedDowntimeMilliseconds { gauge("memreplica_migration_estimated_downtime_seconds", labels, e / 1000) }
            }
            if let last = m.last {
                if let d = last.downtimeMilliseconds { gauge("memreplica_migration_last_downtime_seconds", labels, d / 1000) }
                gauge("memreplica_migration_last_total_seconds", labels, last.totalSeconds)
                gauge("memreplica_migration_last_sent_bytes", labels, Double(last.bytesSent))
            }
        }
        removeSeries(except: seen)
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> SeriesKey {
        SeriesKey(name: name, labels: labels.flatMap { [$0.0, $0.1] })
    }

    private func gauge(_ name: String, _ labels: [(String, String)]) -> CoreMetrics.Gauge {
        let key = Self.key(name, labels)
        return state.withLock { s in
            if let g = s.gauges[key] { return g }
            let g = CoreMetrics.Gauge(label: name, dimensions: labels, factory: factory)
            s.gauges[key] = g
            return g
        }
    }

    /// Adds what `total` grew by since the last update. A smaller total is
    /// a restarted count (a new connection behind the same labels): all
    /// of it is new.
    private func counter(_ name: String, _ labels: [(String, String)], total: Double) {
        let key = Self.key(name, labels)
        let (counter, increase) = state.withLock { s -> (CoreMetrics.FloatingPointCounter, Double) in
            let entry = s.counters[key] ?? (CoreMetrics.FloatingPointCounter(label: name, dimensions: labels, factory: factory), 0)
            s.counters[key] = (entry.counter, total)
            return (entry.counter, total >= entry.last ? total - entry.last : total)
        }
        if increase > 0 { counter.increment(by: increase) }
    }

    private func timer(_ name: String, _ labels: [(String, String)]) -> CoreMetrics.Timer {
        let key = Self.key(name, labels)
        return state.withLock { s in
            if let t = s.timers[key] { return t }
            let t = CoreMetrics.Timer(label: name, dimensions: labels, factory: factory)
            s.timers[key] = t
            return t
        }
    }

    /// Histograms stay: their samples are history, not a reading.
    private func removeSeries(except seen: Set<SeriesKey>) {
        let (gone, goneCounters) = state.withLock { s -> ([CoreMetrics.Gauge], [CoreMetrics.FloatingPointCounter]) in
            let gauges = s.gauges.filter { !seen.contains($0.key) }
            let counters = s.counters.filter { !seen.contains($0.key) }
            for key in gauges.keys { s.gauges[key] = nil }
            for key in counters.keys { s.counters[key] = nil }
            return (Array(gauges.values), counters.values.map(\.counter))
        }
        for g in gone { g.destroy() }
        for c in goneCounters { c.destroy() }
    }
}
