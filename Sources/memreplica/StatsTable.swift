import MemReplica
import MemReplicaTransportCore
import Foundation

/// The human form of a stats report: a header line, then connections,
/// regions, mirrors and latency percentiles, each as a table that fits a
/// terminal when there are a few of each.
enum StatsTable {
    static func render(_ report: StatsReport) -> String {
        var out = "\(report.peer)  memreplica \(report.version)  up \(Format.uptime(report.uptimeSeconds))"
            + "  window \(Format.seconds(report.windowSeconds))  at \(ISO8601DateFormatter().string(from: report.takenAt))\n"
        out += connections(report.connections)
        out += regions(report.regions)
        out += replicas(report.regions)
        out += latencies(report.regions)
        out += migrations(report.migrations ?? [])
        return out
    }

    private static func migrations(_ migrations: [StatsReport.Migration]) -> String {
        guard !migrations.isEmpty else { return "" }
        let rows = migrations.map { m -> [String] in
            let now = m.running.map { "\($0.phase), round \($0.round)" } ?? "-"
            let last = m.last.map { l in l.outcome + (l.downtimeMilliseconds.map { ", downtime \(Format.milliseconds($0))" } ?? "") } ?? "-"
            let counts = m.outcomes.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
            return [m.region, now, last, counts]
        }
        return "migrations   \(migrations.count)\n" + StatusTable.table([["REGION", "NOW", "LAST", "SO FAR"]] + rows)
    }

    private static func connections(_ connections: [StatsReport.Connection]) -> String {
        guard !connections.isEmpty else { return "connections  none\n" }
        let header = ["PEER", "REMOTE", "DIR", "CC", "SRTT", "MIN RTT", "RTTVAR", "CWND", "IN FLIGHT", "RATE/S", "PTO",
                      "SENT", "RECEIVED", "PACKETS OUT/IN", "HANDSHAKE", "RECONN", "BULK HELD"]
        let rows = connections.map { c in [
            c.peer, c.remoteAddress, c.initiatedLocally ? "out" : "in", c.congestionControl,
            Format.seconds(c.smoothedRTTSeconds), Format.seconds(c.minRTTSeconds), Format.seconds(c.rttVarianceSeconds),
            Format.bytes(c.congestionWindowBytes), Format.bytes(c.bytesInFlight), Format.bytes(c.deliveryRateBytesPerSecond),
            "\(c.ptoCount)", Format.bytes(c.bytesSent), Format.bytes(c.bytesReceived), "\(c.packetsSent)/\(c.packetsReceived)",
            c.handshakeSeconds.map(Format.seconds) ?? "-", "\(c.reconnects)", c.bulkQueueHeldSeconds.map(Format.seconds) ?? "-",
        ] }
        return "connections  \(connections.count)\n" + StatusTable.table([header] + rows)
    }

    private static func regions(_ regions: [StatsReport.Region]) -> String {
        guard !regions.isEmpty else { return "regions      none\n" }
        let header = ["REGION", "ROLE", "SIZE", "PUSHED", "PULLED", "DIRTY/S", "WIRE/DIRTY", "SKIPPED ZERO/SAME", "COMPRESSED",
                      "SCAN LAST/MEAN/MAX", "PRESENT", "FAULTS", "RECONN"]
        let rows = regions.map { r -> [String] in
            let role = r.role == "replica" ? (r.lazy == true ? "replica (lazy)" : "replica") : r.role
            return [
                r.name, role, Format.bytes(UInt64(r.size)),
                transfer(r.chunksPushed, r.bytesPushed), transfer(r.chunksPulled, r.bytesPulled),
                r.dirtyBytesPerSecond.map { Format.bytes(UInt64($0.rounded())) } ?? "-",
                r.wire.map { String(format: "%.3f", $0.wireRatio) } ?? "-",
                r.wire.map { "\($0.zeroChunks)/\($0.redundantChunks)" } ?? "-",
                r.wire.map { $0.compressionInputBytes == 0 ? "-" : String(format: "%.2f×", 1 / $0.compressionRatio)
                                                                    + " in \(Format.seconds($0.compressionSeconds))" } ?? "-",
                r.scan.map { "\(Format.seconds($0.lastSeconds)) / \(Format.seconds($0.meanSeconds)) / \(Format.seconds($0.longestSeconds))" } ?? "-",
                r.chunksPresent.map { "\($0) chunks" } ?? "-",
                r.faults.map { "\(r.faultsServed ?? 0)/\($0) served" } ?? "-",
                r.reconnects.map(String.init) ?? "-",
            ]
        }
        return "regions      \(regions.count)\n" + StatusTable.table([header] + rows)
    }

    /// "12 (768.0 KiB)", or the chunks alone where bytes are not counted.
    private static func transfer(_ chunks: UInt64?, _ bytes: UInt64?) -> String {
        guard let chunks else { return "-" }
        return bytes.map { "\(chunks) (\(Format.bytes($0)))" } ?? "\(chunks)"
    }

    private static func replicas(_ regions: [StatsReport.Region]) -> String {
        let rows = regions.flatMap { r in
            (r.replicas ?? []).map { m in
                [r.name, m.peer, m.synced ? "yes" : "no", "\(m.acknowledgedVersion)/\(m.sentVersion)", "\(m.versionLag)",
                 Format.seconds(m.timeLagSeconds)]
            }
        }
        guard !rows.isEmpty else { return "" }
        return "mirrors      \(rows.count)\n"
            + StatusTable.table([["REGION", "MIRROR", "SYNCED", "ACKED/SENT", "VERSION LAG", "TIME LAG"]] + rows)
    }

    private static func latencies(_ regions: [StatsReport.Region]) -> String {
        var rows: [[String]] = []
        for r in regions {
            let measures: [(String, LatencySummary?)] = [("replication lag", r.replicationLag), ("fault", r.faultLatency),
                                                         ("read", r.readLatency)]
            for (name, summary) in measures {
                guard let summary else { continue }
                rows.append(distribution(r.name, name, "last \(Format.seconds(summary.windowSeconds))", summary.window))
                rows.append(distribution(r.name, name, "since start", summary.sinceStart))
            }
        }
        guard !rows.isEmpty else { return "" }
        return "latency\n" + StatusTable.table([["REGION", "MEASURE", "OVER", "COUNT", "P50", "P90", "P99", "P99.9", "MAX"]] + rows)
    }

    private static func distribution(_ region: String, _ measure: String, _ over: String, _ d: LatencyDistribution) -> [String] {
        guard d.count > 0 else { return [region, measure, over, "0", "-", "-", "-", "-", "-"] }
        return [region, measure, over, "\(d.count)"]
            + [d.p50Seconds, d.p90Seconds, d.p99Seconds, d.p999Seconds, d.maxSeconds].map(Format.seconds)
    }
}
