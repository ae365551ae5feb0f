@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Stats: from running peer processes", .serialized)
struct StatsProcessTests {
    let root = NSTemporaryDirectory() + "mr-stats-\(UUID().uuidString.prefix(8))"

    /// Runs a command line with stdout in a file; returns the exit status and stdout.
    private func run(_ command: String) throws -> (status: Int32, stdout: String) {
        let out = root + "/stdout-\(UUID().uuidString.prefix(6)).txt"
        let child = try ChildProcess("/bin/sh", ["-c", "exec \(command) >'\(out)' 2>>'\(root)/stderr.txt'"])
        let status = child.wait()
        return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
    }

    /// The documented keys of `stats --json`: present in every report of that kind.
    static let connectionKeys = ["remoteAddress", "peer", "fingerprint", "initiatedLocally", "latestRTTSeconds", "minRTTSeconds",
                                 "smoothedRTTSeconds", "rttVarianceSeconds", "congestionWindowBytes", "bytesInFlight",
                                 "deliveryRateBytesPerSecond", "ptoCount", "bytesSent", "bytesReceived", "packetsSent",
                                 "packetsReceived", "maxPacketPayloadBytes", "reconnects"]
    static let primaryKeys = ["name", "role", "size", "chunkSize", "chunksPushed", "bytesPushed", "chunksPulled", "bytesPulled",
                              "scan", "replicas", "replicationLag"]
    static let distributionKeys = ["count", "p50Seconds", "p90Seconds", "p99Seconds", "p999Seconds", "maxSeconds"]

    @Test("after a loopback replication: stats --json is plausible (version lag 0, bytes pushed ≥ the region), /metrics parses with prometheus_client and has the documented series")
    func statsAndMetricsFromRunningPeers() async throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let size = 4 << 20, chunkSize = 64 << 10
        let primaryPath = root + "/primary.bin"
        try Data(patternBytes(count: size, seed: 7)).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        let metricsPort = unusedTCPPort()
        let peers = try await PeerProcessPair(root: root, primaryPath: primaryPath, replicaPath: root + "/replica.bin",
                                              lazy: false, primaryArguments: ["--metrics", ":\(metricsPort)"])
        defer { peers.terminate(grace: .milliseconds(500)) }
        let deadline = ContinuousClock.now + .seconds(60)

        // Replicated and acknowledged, as the primary sees it.
        let primaryControl = ControlClient(path: root + "/p.sock")
        while true {
            let report = try? await primaryControl.stats()
            if let mirror = report?.regions.first?.replicas?.first, mirror.synced, mirror.versionLag == 0,
               mirror.acknowledgedVersion > 0 {
                break
            }
            try #require(ContinuousClock.now < deadline, "no synced mirror after 60 s: \(String(describing: report))")
            try await Task.sleep(for: .milliseconds(100))
        }

        // The CLI's JSON, as a script would read it.
        let json = try run("'\(exe)' stats --json --control '\(root)/p.sock'")
        #expect(json.status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        for key in ["version", "peer", "takenAt", "uptimeSeconds", "windowSeconds", "connections", "regions"] {
            #expect(object[key] != nil, "stats --json lacks \(key)")
        }
        let connections = try #require(object["connections"] as? [[String: Any]])
        let regions = try #require(object["regions"] as? [[String: Any]])
        try #require(connections.count == 1 && regions.count == 1, "\(json.stdout)")
        for key in Self.connectionKeys { #expect(connections[0][key] != nil, "a connection lacks \(key)") }
        for key in Self.primaryKeys { #expect(regions[0][key] != nil, "a primary region lacks \(key)") }
        let lag = try #require(regions[0]["replicationLag"] as? [String: Any])
        for over in ["window", "sinceStart"] {
            let d = try #require(lag[over] as? [String: Any])
            for key in Self.distributionKeys { #expect(d[key] != nil, "replicationLag.\(over) lacks \(key)") }
        }

        let report = try StatusReport.makeDecoder().decode(StatsReport.self, from: Data(json.stdout.utf8))
        #expect(report.peer == "primary")
        let c = report.connections[0]
        #expect(c.peer == "replica" && !c.initiatedLocally && c.reconnects == 0)
        #expect(c.smoothedRTTSeconds > 0 && c.smoothedRTTSeconds < 1, "loopback SRTT \(c.smoothedRTTSeconds) s")
        #expect(c.minRTTSeconds > 0 && c.minRTTSeconds <= c.smoothedRTTSeconds + c.rttVarianceSeconds * 4)
        #expect(c.congestionWindowBytes > 0 && c.bytesSent >= UInt64(size))
        // The peers share this host: QUIC sends packets up to the loopback
        // MTU rather than sizing them for an unknown path.
        #expect(c.maxPacketPayloadBytes == QUICConfiguration().hostLocalUDPPayloadSize)
        #expect(c.packetsSent > UInt64(size / c.maxPacketPayloadBytes))
        #expect(c.bytesReceived > 0 && c.packetsReceived > 0)
        let r = report.regions[0]
        #expect(r.role == "primary" && r.size == size && r.chunkSize == chunkSize)
        #expect((r.bytesPushed ?? 0) >= UInt64(size) && (r.chunksPushed ?? 0) >= UInt64(size / chunkSize))
        #expect(r.chunksPulled == 0 && r.bytesPulled == 0)
        let mirror = try #require(r.replicas?.first)
        #expect(mirror.peer == "replica" && mirror.synced && mirror.versionLag == 0 && mirror.timeLagSeconds == 0)
        #expect(mirror.acknowledgedVersion == mirror.sentVersion && mirror.sentVersion == r.chunksPushed)
        let scan = try #require(r.scan)
        #expect(scan.scans > 0 && scan.meanSeconds > 0 && scan.longestSeconds >= scan.meanSeconds)
        let replicationLag = try #require(r.replicationLag)
        #expect(replicationLag.sinceStart.count == r.chunksPushed)
        #expect(replicationLag.sinceStart.p50Seconds > 0 && replicationLag.sinceStart.p50Seconds <= replicationLag.sinceStart.maxSeconds)
        #expect(replicationLag.sinceStart.maxSeconds < 30)
        #expect(replicationLag.windowSeconds == 60 && replicationLag.window.count == replicationLag.sinceStart.count)

        // The replica's view: everything present, its connection made by it.
        let replicaReport = try await ControlClient(path: root + "/r.sock").stats()
        let mirrored = try #require(replicaReport.regions.first)
        #expect(mirrored.role == "replica" && mirrored.lazy == false && mirrored.size == size)
        #expect(mirrored.chunksPresent == size / chunkSize && mirrored.reconnects == 0)
        #expect(mirrored.chunksPushed == r.chunksPushed)
        let out = try #require(replicaReport.connections.first)
        #expect(out.initiatedLocally && (out.handshakeSeconds ?? 0) > 0 && out.bytesReceived >= UInt64(size))
        // A peer on this host has no bottleneck queue: no gate, no held time.
        #expect(out.bulkQueueHeldSeconds == nil)

        // The table a person reads.
        let table = try run("'\(exe)' stats --control '\(root)/p.sock'")
        #expect(table.status == 0)
        for needle in ["primary", "connections  1", "replica", "mirrors      1", "replication lag", "since start"] {
            #expect(table.stdout.contains(needle), "the table lacks '\(needle)':\n\(table.stdout)")
        }

        // --watch into a file: reports appended, no terminal escapes, until SIGINT.
        let watch = try run("timeout -s INT 1.8 '\(exe)' stats --watch --interval 0.5 --control '\(root)/p.sock'")
        #expect(watch.status == 124, "timeout's status when it had to interrupt the command")
        let reports = watch.stdout.components(separatedBy: "primary  memreplica ").count - 1
        #expect(reports >= 3 && reports <= 4, "\(reports) reports in 1.8 s at 0.5 s intervals")
        #expect(!watch.stdout.contains("\u{1B}["))

        try await checkMetrics(port: metricsPort, regionSize: size)
    }

    @Test("a lazy mirror's background pull shows on the primary as chunks and bytes pulled, with READ latencies")
    func lazyMirrorPulls() async throws {
        let shm = "/dev/shm/mr-stats-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root); unlink(shm) }
        let size = 8 << 20, chunks = size / (64 << 10)
        let primaryPath = root + "/primary.bin"
        try Data(patternBytes(count: size, seed: 8)).write(to: URL(fileURLWithPath: primaryPath))
        let peers = try await PeerProcessPair(root: root, primaryPath: primaryPath, replicaPath: shm, lazy: true)
        defer { peers.terminate(grace: .milliseconds(500)) }
        let deadline = ContinuousClock.now + .seconds(60)
        let replicaControl = ControlClient(path: root + "/r.sock")
        while true {
            let region = try? await replicaControl.stats().regions.first
            if region?.chunksPresent == chunks { break }
            try #require(ContinuousClock.now < deadline, "the lazy replica never filled in: \(String(describing: region))")
            try await Task.sleep(for: .milliseconds(100))
        }
        let mirrored = try #require(try await replicaControl.stats().regions.first)
        #expect(mirrored.role == "replica" && mirrored.lazy == true && mirrored.size == size)
        let faults = try #require(mirrored.faults)
        // Every fault is served once the replica holds every chunk.
        let served = try #require(mirrored.faultsServed, "a lazy replica reports faults served")
        #expect(served == faults)
        #expect(mirrored.chunksPushed == nil, "a lazy replica is never pushed chunks")

        let r = try #require(try await ControlClient(path: root + "/p.sock").stats().regions.first)
        #expect(r.role == "primary")
        #expect((r.chunksPulled ?? 0) >= UInt64(chunks) && (r.bytesPulled ?? 0) >= UInt64(size), "\(r)")
        #expect(r.chunksPushed == 0 && r.bytesPushed == 0)
        let reads = try #require(r.readLatency)
        #expect(reads.sinceStart.count >= 1 && reads.sinceStart.count <= r.chunksPulled ?? 0)
        #expect(reads.sinceStart.maxSeconds > 0 && reads.sinceStart.maxSeconds < 30)
        // Lazy mirrors acknowledge DIRTY epochs, not versions: no replication lag is measured.
        #expect(r.replicationLag == nil)
        #expect(r.replicas?.first?.versionLag == 0)
    }

    /// Scrapes the primary's endpoint and parses it with the Python client's
    /// own parser, which rejects anything outside the text format.
    private func checkMetrics(port: UInt16, regionSize: Int) async throws {
        let script = root + "/scrape.py"
        try Data("""
            import json, sys, urllib.request, urllib.error
            from prometheus_client.parser import text_string_to_metric_families
            response = urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=5)
            text = response.read().decode()
            families = {f.name: {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                        for f in text_string_to_metric_families(text)}
            try:
                urllib.request.urlopen(sys.argv[1] + "/nope", timeout=5)
                missing = 200
            except urllib.error.HTTPError as e:
                missing = e.code
            print(json.dumps({"contentType": response.headers["Content-Type"], "families": families, "notFound": missing}))
            """.utf8).write(to: URL(fileURLWithPath: script))
        struct Scrape: Decodable {
            struct Family: Decodable { var type: String; var samples: [Sample] }
            struct Sample: Decodable {
                var name: String; var labels: [String: String]; var value: Double
                init(from decoder: any Decoder) throws {
                    var c = try decoder.unkeyedContainer()
                    name = try c.decode(String.self); labels = try c.decode([String: String].self); value = try c.decode(Double.self)
                }
            }
            var contentType: String
            var families: [String: Family]
            var notFound: Int
        }
        // The series are refreshed once a second: wait for the first refresh after the sync.
        var scrape: Scrape?
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            let result = try run("python3 '\(script)' http://127.0.0.1:\(port)")
            try #require(result.status == 0, "the scrape failed: \((try? String(contentsOfFile: root + "/stderr.txt", encoding: .utf8)) ?? "")")
            scrape = try JSONDecoder().decode(Scrape.self, from: Data(result.stdout.utf8))
            if (scrape?.families["memreplica_pushed_bytes"]?.samples.first?.value ?? 0) >= Double(regionSize),
               scrape?.families["memreplica_rtt_seconds"] != nil {
                break
            }
            try #require(ContinuousClock.now < deadline, "the metrics never showed the sync: \(String(describing: scrape))")
            try await Task.sleep(for: .milliseconds(300))
        }
        let s = try #require(scrape)
        #expect(s.contentType == "text/plain; version=0.0.4; charset=utf-8")
        #expect(s.notFound == 404)
        // The parser drops a counter's _total suffix from the family name.
        let expected: [String: String] = [
            "memreplica_rtt_seconds": "histogram", "memreplica_replication_lag_seconds": "histogram",
            "memreplica_smoothed_rtt_seconds": "gauge", "memreplica_min_rtt_seconds": "gauge",
            "memreplica_latest_rtt_seconds": "gauge", "memreplica_rtt_variance_seconds": "gauge",
            "memreplica_congestion_window_bytes": "gauge", "memreplica_in_flight_bytes": "gauge",
            "memreplica_delivery_rate_bytes_per_second": "gauge", "memreplica_pto_count": "gauge",
            "memreplica_sent_bytes": "counter", "memreplica_received_bytes": "counter",
            "memreplica_sent_packets": "counter", "memreplica_received_packets": "counter", "memreplica_reconnects": "counter",
            "memreplica_pushed_chunks": "counter", "memreplica_pushed_bytes": "counter", "memreplica_pulled_chunks": "counter",
            "memreplica_pulled_bytes": "counter", "memreplica_dirty_chunks": "counter", "memreplica_scans": "counter",
            "memreplica_scan_seconds": "counter", "memreplica_replica_version_lag": "gauge",
            "memreplica_replica_time_lag_seconds": "gauge", "memreplica_uptime_seconds": "gauge",
        ]
        for (name, type) in expected.sorted(by: { $0.key < $1.key }) {
            #expect(s.families[name]?.type == type, "\(name): \(s.families[name]?.type ?? "missing"), expected \(type)")
        }
        let lag = try #require(s.families["memreplica_replication_lag_seconds"]?.samples)
        let count = try #require(lag.first { $0.name == "memreplica_replication_lag_seconds_count" })
        #expect(count.labels == ["region": "r"] && count.value >= Double(regionSize / (64 << 10)))
        let buckets = lag.filter { $0.name == "memreplica_replication_lag_seconds_bucket" }.map { $0.labels["le"] ?? "" }
        #expect(buckets.first == "0.00005" && buckets.last == "+Inf", "\(buckets)")
        let versionLag = try #require(s.families["memreplica_replica_version_lag"]?.samples.first)
        #expect(versionLag.labels == ["region": "r", "replica": "replica"] && versionLag.value == 0)
        let sent = try #require(s.families["memreplica_sent_bytes"]?.samples.first)
        #expect(sent.name == "memreplica_sent_bytes_total" && sent.labels["peer"] == "replica" && sent.labels["direction"] == "in")
        #expect(sent.value >= Double(regionSize))
    }
}
