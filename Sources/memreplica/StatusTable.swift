import MemReplica
import Foundation

/// The human form of a status report: a short header, then one line per peer.
enum StatusTable {
    static func render(_ report: StatusReport) -> String {
        var out = ""
        let me = report.identity
        out += "peer       \(me.commonName ?? me.subject) (\(me.subject))\n"
        out += "sha256     \(me.fingerprint)\n"
        out += "listening  \(report.listenAddress)\(report.listenAddress.hasPrefix(":") ? " (all interfaces)" : "")\n"
        out += "uptime     \(Format.uptime(report.uptimeSeconds)) (since \(ISO8601DateFormatter().string(from: report.startedAt)))\n"
        out += "version    \(report.version)\n"
        out += regions(report.regions)
        guard !report.peers.isEmpty else { return out + "peers      none connected\n" }
        out += "peers      \(report.peers.count) connected\n"
        let rows = [["REMOTE", "IDENTITY", "DIR", "CC", "SRTT", "MIN RTT", "LAST RTT", "SENT", "RECEIVED"]]
        return out + table(rows + report.peers.map { p in [
                p.remoteAddress,
                "\(p.identity.commonName ?? p.identity.subject) (\(p.identity.fingerprint.prefix(12))…)",
                p.initiatedLocally ? "out" : "in",
                p.congestionControl,
                Format.milliseconds(p.smoothedRTTMilliseconds),
                Format.milliseconds(p.minRTTMilliseconds),
                Format.milliseconds(p.latestRTTMilliseconds),
                Format.bytes(p.bytesSent),
                Format.bytes(p.bytesReceived),
            ] })
    }

    private static func regions(_ regions: [StatusReport.Region]) -> String {
        guard !regions.isEmpty else { return "regions    none\n" }
        let rows = [["REGION", "ROLE", "SIZE", "CHUNK", "IN SYNC", "VERSION", "FROM / MIRRORS", "PATH"]] + regions.map { r in
            [r.name, r.role, Format.bytes(UInt64(r.size)), Format.bytes(UInt64(r.chunkSize)),
             r.chunksPresent.map { "\($0)/\(r.chunks)" } ?? "-", r.lastAppliedVersion.map(String.init) ?? "-",
             r.source ?? mirrorList(r.mirrors ?? []), r.path]
        }
        var out = "regions    \(regions.count)\n" + table(rows)
        for r in regions {
            if let problem = r.problem {
                let what = r.role == "primary" ? "unavailable" : r.role == "handed over" ? "handed over" : "not current"
                out += "  \(r.name): \(what): \(problem)\n"
            }
            if let m = r.migration {
                let estimate = m.estimatedDowntimeMilliseconds.map { Format.milliseconds($0) } ?? "-"
                out += "  \(r.name): migrating: \(m.phase), round \(m.round), \(Format.bytes(m.pendingBytes)) to send, "
                    + "estimated downtime \(estimate), \(Format.bytes(UInt64(m.rateBytesPerSecond)))/s\n"
            } else if let last = r.lastMigration {
                let downtime = last.downtimeMilliseconds.map { ", downtime \(Format.milliseconds($0))" } ?? ""
                out += "  \(r.name): last migration to \(last.destination): \(last.outcome)\(downtime)"
                    + "\(last.reason.map { ": \($0)" } ?? "")\n"
            }
        }
        let attached = regions.flatMap { r in (r.attached ?? []).map { (r.name, $0) } }
        guard !attached.isEmpty else { return out }
        out += "attached   \(attached.count) process\(attached.count == 1 ? "" : "es")\n"
        out += table([["REGION", "PID", "MODE"]] + attached.map { [$0.0, String($0.1.pid), $0.1.mode] })
        return out
    }

    /// "peer-b (lag 0), peer-c (syncing, lag 12)" — versions sent, not yet
    /// acknowledged; "pass over 8 streams" when the initial pass used lanes.
    private static func mirrorList(_ mirrors: [StatusReport.Region.Mirror]) -> String {
        guard !mirrors.isEmpty else { return "none" }
        return mirrors.map { m in
            var lanes = ""
            if let streams = m.passStreams, streams > 1 { lanes = ", pass over \(streams) streams" }
            return "\(m.peer) (\(m.synced ? "" : "syncing, ")lag \(m.versionLag)\(lanes))"
        }.joined(separator: ", ")
    }

    /// Left-aligned columns, two spaces apart, indented by two.
    static func table(_ rows: [[String]]) -> String {
        var out = ""
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            let cells = zip(row, widths).map { cell, width in cell.padding(toLength: width, withPad: " ", startingAt: 0) }
            out += "  " + cells.joined(separator: "  ").trimmingCharacters(in: .whitespaces) + "\n"
        }
        return out
    }
}
