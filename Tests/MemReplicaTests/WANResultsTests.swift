@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaWAN
import MemReplicaTransportCore
import MemReplicaSystem
import Foundation
import Testing

/// `bench wan`'s writers and sanity checks, fed a synthetic report (no
/// emulator, no root): every file it writes is compared with a golden copy
/// in Golden/. After a deliberate change of format, regenerate them with
/// MEMREPLICA_UPDATE_GOLDEN=1 and read the diff before committing it.
@Suite("bench wan: result files and sanity checks against golden files")
struct WANResultsTests {
    static let bbrLossy = WANScenario(rttMilliseconds: 50, lossPercent: 1, regions: 16, congestionControl: "bbr")
    static let bbrClean = WANScenario(rttMilliseconds: 50, lossPercent: 0, regions: 1, congestionControl: "bbr")
    static let cubicShort = WANScenario(rttMilliseconds: 10.5, lossPercent: 0.25, regions: 4, congestionControl: "cubic")

    /// One run with numbers derived from where it sits in the matrix, so
    /// every column differs and the medians are easy to check by hand.
    static func run(_ scenario: WANScenario, _ kind: TransportKind, _ run: Int) -> WANRunResult {
        let rtt = scenario.rttMilliseconds
        let k = Double(TransportKind.allCases.firstIndex(of: kind)!)
        let r = Double(run)
        let complete = !(kind == .tcp && scenario.lossPercent > 0 && run == 2)
        let synced = complete ? 64 << 20 : 40 << 20
        let seconds = complete ? 2 + k + r / 4 : 30
        var result = WANRunResult(
            scenario: scenario, transport: kind.rawValue, run: run,
            connectMilliseconds: 2 * rtt + 1 + k, reconnectMilliseconds: rtt + 0.5 + k,
            readSamples: 100 * run + Int(k),
            readP50Milliseconds: rtt + 0.25 + 3 * k + r, readP99Milliseconds: rtt * (1.5 + k) + r,
            readP999Milliseconds: rtt * (2 + k) + r, readMaxMilliseconds: rtt * (3 + k) + r,
            bulkBytesSynced: synced, bulkBytesTotal: 64 << 20, bulkSeconds: seconds, bulkCompleted: complete,
            throughputMbps: Double(synced) * 8 / seconds / 1e6,
            lagSamples: 50, lagP50Milliseconds: rtt / 2 + 2 + k + r, lagP99Milliseconds: rtt / 2 + 9 + k + r,
            packetsPassed: 40_000 + UInt64(run), packetsDroppedByLoss: scenario.lossPercent > 0 ? 400 : 0,
            packetsDroppedByQueue: UInt64(k), kernelTxDropped: 0)
        // One transport's runs without the emulator's queue figure: its cell reads "–".
        result.bulkQueueWaitMilliseconds = kind == .tcpPerRegion ? nil : 1.5 + k + r
        return result
    }

    static func calibration(_ scenario: WANScenario, capacity: Double?) -> WANCalibrationReport {
        var statistics = WANEmulatorStatistics()
        statistics.aToB.packetsPassed = 1000
        statistics.bToA.packetsPassed = 990
        statistics.aToB.kernelTxDropped = 0
        let rtt = Duration.microseconds(Int64(scenario.rttMilliseconds * 1000))
        return WANCalibrationReport(
            probes: 1000, configuredRTT: rtt, measuredRTT: rtt + .microseconds(120), minimumRTT: rtt + .microseconds(80),
            rttAgrees: true, configuredLossAToB: scenario.lossPercent / 100, configuredLossBToA: scenario.lossPercent / 100,
            measuredLossAToB: scenario.lossPercent / 100 * 1.02, measuredLossBToA: scenario.lossPercent / 100 * 0.9,
            lossToleranceAToB: 0.003, lossToleranceBToA: 0.003, lossAgrees: scenario.lossPercent < 1,
            capacityPacketsPerSecond: capacity, capacitySaturated: capacity != nil,
            baselineRTT: capacity.map { _ in .microseconds(95) }, statistics: statistics)
    }

    static func report(results: [WANRunResult]) -> WANBenchmarkReport {
        let (summaries, ratios, targets) = WANBenchmarkReport.summarize(results)
        let settings = WANBenchmarkReport.Settings(
            runs: 2, bulkBytes: 64 << 20, bulkChunkBytes: 64 << 10, bulkTimeLimitSeconds: 30, readChunkBytes: 64 << 10,
            readers: 4, lagWrites: 50, lagWritesPerSecond: 20, scanIntervalMilliseconds: 5, rateBitsPerSecond: 1_000_000_000,
            queueLimitBytes: 4 << 20, lossAppliedTo: "both directions")
        return WANBenchmarkReport(
            startedAt: "2026-01-02T03:04:05Z", seconds: 312.5, quick: false, settings: settings,
            calibrations: [calibration(bbrLossy, capacity: 415_000), calibration(cubicShort, capacity: nil)],
            results: results, summaries: summaries, ratios: ratios, targets: targets)
    }

    static let fullReport = report(results: [bbrLossy, bbrClean, cubicShort].flatMap { s in
        (1...2).flatMap { r in TransportKind.allCases.map { run(s, $0, r) } }
    })

    /// The golden file's text, or (with MEMREPLICA_UPDATE_GOLDEN=1) writes
    /// `text` over it in the source tree and fails, to be rerun.
    private func expectGolden(_ name: String, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        if ProcessInfo.processInfo.environment["MEMREPLICA_UPDATE_GOLDEN"] == "1" {
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/" + name)
            try Data(text.utf8).write(to: source)
            Issue.record("rewrote Golden/\(name); rerun without MEMREPLICA_UPDATE_GOLDEN", sourceLocation: sourceLocation)
            return
        }
        let url = try #require(Bundle.module.resourceURL?.appendingPathComponent("Golden/" + name), sourceLocation: sourceLocation)
        let golden = try String(contentsOf: url, encoding: .utf8)
        guard golden != text else { return }
        let (a, b) = (golden.split(separator: "\n", omittingEmptySubsequences: false), text.split(separator: "\n", omittingEmptySubsequences: false))
        let line = a.indices.first { $0 >= b.count || a[$0] != b[$0] } ?? a.count
        Issue.record("\(name) differs from Golden/\(name) at line \(line + 1):\n  golden: \(line < a.count ? a[line] : "<end>")\n  now:    \(line < b.count ? b[line] : "<end>")",
                     sourceLocation: sourceLocation)
    }

    @Test("the JSON, CSV and Markdown of a report match their golden files")
    func filesMatchGolden() throws {
        let writer = WANResultsWriter(report: Self.fullReport, stamp: "20260102T030405Z")
        try expectGolden("wan-report.json", String(decoding: try writer.jsonData(), as: UTF8.self) + "\n")
        try expectGolden("wan-report.csv", writer.csvText())
        try expectGolden("wan-report.md", writer.markdownSection(plots: ["results/wan-20260102T030405Z-latency.png"]) + "\n")
    }

    @Test("the run files land in the folder under the stamp's name, and the JSON reads back as the same report")
    func runFilesRoundTrip() throws {
        let dir = NSTemporaryDirectory() + "mr-wan-\(UUID().uuidString.prefix(8))/results"
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let writer = WANResultsWriter(report: Self.fullReport, stamp: "20260102T030405Z")
        let files = try writer.writeRunFiles(into: dir)
        #expect(files.json == dir + "/wan-20260102T030405Z.json" && files.csv == dir + "/wan-20260102T030405Z.csv")
        let back = try JSONDecoder().decode(WANBenchmarkReport.self, from: Data(contentsOf: URL(fileURLWithPath: files.json)))
        #expect(try WANResultsWriter(report: back, stamp: writer.stamp).jsonData() == writer.jsonData())
        #expect(try String(contentsOfFile: files.csv, encoding: .utf8) == writer.csvText())
        // One CSV line per run and transport, every line as wide as the header.
        let lines = writer.csvText().split(separator: "\n")
        #expect(lines.count == 1 + Self.fullReport.results.count)
        #expect(Set(lines.map { $0.split(separator: ",", omittingEmptySubsequences: false).count }).count == 1)
    }

    @Test("the medians, ratios and targets are those of the runs")
    func summaries() throws {
        let report = Self.fullReport
        #expect(report.summaries.count == 9)
        let quick = try #require(report.summaries.first { $0.scenario == Self.bbrLossy && $0.transport == "quic" })
        // The median of two runs is their mean: 51.25 and 52.25.
        #expect(quick.readP50Milliseconds == 51.75)
        let tcp = try #require(report.summaries.first { $0.scenario == Self.bbrLossy && $0.transport == "tcp" })
        #expect(tcp.bulkCompletedRuns == 1 && tcp.runs == 2)
        let ratio = try #require(report.ratios.first { $0.scenario == Self.bbrLossy && $0.against == "tcp" })
        #expect(ratio.readP99 == quick.readP99Milliseconds / tcp.readP99Milliseconds)
        #expect(report.targets.map(\.target).sorted() == [
            "QUIC p99 chunk read ≤ 0.5 × TCP-multiplexed p99",
            "read while bulk sync runs: QUIC p50 ≤ RTT + 1 ms",
            "replication lag (write → replica holds it): QUIC p50 ≤ RTT/2 + 5 ms",
            "throughput: QUIC ≥ 0.8 × TCP-per-region",
        ])
    }

    @Test("updating RESULTS.md replaces only the section between the markers, appends it once, and creates the file")
    func markdownUpdate() throws {
        let dir = NSTemporaryDirectory() + "mr-wan-md-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = WANResultsWriter(report: Self.fullReport, stamp: "20260102T030405Z")
        let section = writer.markdownSection(plots: [])
        let path = dir + "/RESULTS.md"
        let before = "# Results\n\nintro\n\n", after = "\n\n## Other benchmark\n\nkept\n"
        try Data((before + WANResultsWriter.beginMarker + "\nold table\n" + WANResultsWriter.endMarker + after).utf8)
            .write(to: URL(fileURLWithPath: path))
        try writer.updateMarkdown(at: path, plots: [])
        #expect(try String(contentsOfFile: path, encoding: .utf8) == before + section + after)
        try writer.updateMarkdown(at: path, plots: [])
        #expect(try String(contentsOfFile: path, encoding: .utf8) == before + section + after, "idempotent")

        let plain = dir + "/plain.md"
        try Data("# Mine\nno newline at the end".utf8).write(to: URL(fileURLWithPath: plain))
        try writer.updateMarkdown(at: plain, plots: [])
        try writer.updateMarkdown(at: plain, plots: [])
        #expect(try String(contentsOfFile: plain, encoding: .utf8) == "# Mine\nno newline at the end\n\n" + section + "\n")

        let fresh = dir + "/new.md"
        try writer.updateMarkdown(at: fresh, plots: [])
        #expect(try String(contentsOfFile: fresh, encoding: .utf8) == "# memreplica benchmark results\n\n\n" + section + "\n")
    }

    @Test("the smoke mode's sanity check passes sane runs and names each impossible number")
    func sanityProblems() throws {
        #expect(Self.fullReport.sanityProblems(transports: TransportKind.allCases) == [])
        var broken = (1...2).flatMap { r in [TransportKind.quic, .tcp].map { Self.run(Self.bbrLossy, $0, r) } }
        broken[0].readP50Milliseconds = 10  // faster than the 50 ms path allows
        broken[1].connectMilliseconds = 0
        broken[2].readSamples = 0
        broken[2].throughputMbps = 0
        broken[3].lagSamples = 0
        broken[3].lagP50Milliseconds = 5
        broken[3].packetsPassed = 0
        let problems = Self.report(results: broken).sanityProblems(transports: TransportKind.allCases)
        try expectGolden("wan-sanity-problems.txt", problems.joined(separator: "\n") + "\n")
    }

    @Test("a run whose connection ended is reported with its error in the JSON and Markdown, and named by the smoke check")
    func failedRun() throws {
        var report = Self.fullReport
        report.failures = [WANRunFailure(scenario: Self.bbrLossy, transport: "quic", run: 3, error: "protocol error: ERR_INTERNAL")]
        #expect(report.sanityProblems(transports: TransportKind.allCases)
                == ["\(Self.bbrLossy.description), quic run 3: the connection ended: protocol error: ERR_INTERNAL"])
        let decoded = try JSONDecoder().decode(WANBenchmarkReport.self, from: WANResultsWriter(report: report, stamp: "x").jsonData())
        #expect(decoded.failures?.first?.error == "protocol error: ERR_INTERNAL")
        let markdown = WANResultsWriter(report: report, stamp: "20260102T030405Z").markdownSection(plots: [])
        #expect(markdown.contains("Runs whose connection ended, left out of the medians: "
                                  + "\(Self.bbrLossy.description), quic run 3 (protocol error: ERR_INTERNAL)."))
    }

    /// The benchmark's run loop with a stand-in for the measurement: no
    /// emulator, no root. A `TransportError` fails that run only.
    @Test("the run loop lists a run whose connection ended and goes on; bytes that arrived wrong end the benchmark")
    func runLoopCatchesEndedConnections() async throws {
        let dir = NSTemporaryDirectory() + "mr-wan-loop-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = WANBenchmark.Options()
        options.transports = [.quic, .tcp]
        options.runs = 2
        let lines = Locked<[String]>([])
        let bench = try WANBenchmark(options: options, workDirectory: dir) { line in lines.withLock { $0.append(line) } }
        var results: [WANRunResult] = []
        var failures: [WANRunFailure] = []
        var order: [String] = []
        try await bench.measureRuns(of: Self.bbrLossy, total: 4, since: ContinuousClock.now, results: &results, failures: &failures) { kind, run in
            order.append("\(kind.rawValue) \(run)")
            if kind == .tcp && run == 1 { throw TransportError.connectionLost(detail: "ERR_INTERNAL") }
            return Self.run(Self.bbrLossy, kind, run)
        }
        // Transports alternate their order between runs; the failed run does not stop the next.
        #expect(order == ["quic 1", "tcp 1", "tcp 2", "quic 2"])
        #expect(results.map { "\($0.transport) \($0.run)" } == ["quic 1", "tcp 2", "quic 2"])
        #expect(failures.map { "\($0.transport) \($0.run)" } == ["tcp 1"])
        #expect(failures.first?.error == TransportError.connectionLost(detail: "ERR_INTERNAL").description)
        #expect(lines.withLock { $0 }.contains { $0.hasPrefix("[2/4]") && $0.contains("tcp run 1: FAILED, the connection ended") })

        // Any other error is not a run's failure: it ends the benchmark.
        results = []
        failures = []
        await #expect(throws: WANBenchmarkError.self) {
            try await bench.measureRuns(of: Self.bbrLossy, total: 4, since: ContinuousClock.now, results: &results, failures: &failures) { kind, run in
                if kind == .tcp { throw WANBenchmarkError.replicaDiffers(region: "bulk-0", transport: "tcp") }
                return Self.run(Self.bbrLossy, kind, run)
            }
        }
        #expect(failures.isEmpty && results.count == 1)
    }

    /// Whether python3 can import matplotlib (scripts/install-deps.sh installs it).
    static let hasMatplotlib: Bool = {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", "import matplotlib"]
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }()

    @Test("bench/plot_wan.py draws both plots from the golden report", .enabled(if: hasMatplotlib, "needs python3-matplotlib"))
    func plotsFromGoldenReport() async throws {
        let dir = NSTemporaryDirectory() + "mr-wan-plot-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let json = try #require(Bundle.module.resourceURL?.appendingPathComponent("Golden/wan-report.json")).path
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("bench/plot_wan.py").path
        #expect(try await runShell("python3 '\(script)' '\(json)' '\(dir)/wan' 2>'\(dir)/err'") == 0,
                "\((try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? "")")
        for name in ["wan-latency.png", "wan-throughput.png"] {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))
            #expect(bytes.prefix(8) == Data([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), "\(name) is a PNG")
        }
    }
}
