import MemReplica
import MemReplicaBench
import MemReplicaQUIC
import ArgumentParser
import Foundation

struct BenchWANCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wan",
        abstract: "QUIC vs TLS/TCP (one connection, and one per region) across the WAN emulator (needs root).",
        discussion: """
            Runs the scenario matrix (RTT × loss × regions, per congestion controller), every transport in \
            every run, and writes bench/results/wan-STAMP.json and .csv, PNG plots, and the tables in \
            bench/RESULTS.md (paths relative to the current folder). --quick runs one small scenario, \
            checks the numbers are sane (exit 1 if not) and writes under bench/results/tmp.
            """)

    @Flag(help: "One small scenario end to end (50 ms, 1 % loss, 4 regions, one run): a smoke test of the pipeline.")
    var quick = false
    @Option(help: ArgumentHelp("Round-trip times in milliseconds, comma-separated.", valueName: "ms,..."))
    var rtt: String?
    @Option(help: ArgumentHelp("Loss percentages (each direction), comma-separated.", valueName: "percent,..."))
    var loss: String?
    @Option(help: ArgumentHelp("Regions syncing in bulk during the reads, comma-separated.", valueName: "n,..."))
    var regions: String?
    @Option(help: ArgumentHelp("Transports, comma-separated: quic, tcp, tcp-per-region.", valueName: "kinds"))
    var transports: String = TransportKind.allCases.map(\.rawValue).joined(separator: ",")
    @Option(help: ArgumentHelp("Congestion controllers, each a set of its own (QUIC and TCP alike): bbr, bbr1, cubic, reno.", valueName: "cc,..."))
    var cc: String = "bbr"
    @Option(help: ArgumentHelp("What the bulk regions hold, comma-separated, each a set of scenarios: random, zeros, python-heap (a CPython heap that parsed its standard library), sqlite (a database sqlite3 wrote of this machine's package list).", valueName: "kinds"))
    var content: String = BenchContent.random.rawValue
    @Option(help: ArgumentHelp("Wire formats the replica offers, comma-separated: pages (PAGES frames, zstd, lz4, lanes: what a peer offers; lz4 is the primary's choice), pages-lz4 or pages-zstd (PAGES and lanes, that codec only), plain (whole WRITEs on one stream only, the format before PAGES and lanes).", valueName: "modes"))
    var wire: String = WANWireMode.pages.rawValue
    @Option(help: ArgumentHelp("Streams each pass of 16 MiB or more is spread over (LANES), comma-separated, each a set of scenarios; applies to every transport. Default: each transport's own (8 for QUIC, 1 for TCP).", valueName: "n,..."))
    var lanes: String?
    @Option(help: "After the lag phase, a region of this size (suffixes K, M, G) is synced, rewritten at once and timed until the replica equals it (default: no burst phase).")
    var burstSize: String?
    @Option(help: "Runs per scenario and transport (medians are reported).")
    var runs: Int?
    @Option(help: "Bulk bytes per run, split over the regions (suffixes K, M, G).")
    var bulkSize: String?
    @Option(help: "Seconds after which a bulk sync still running is stopped (its bytes so far count).")
    var bulkSeconds: Double?
    @Option(help: "Streams reading chunks at once during the bulk sync.")
    var readers: Int = 8
    @Option(help: "Link rate in Mbit/s each way (0: no limit).")
    var rateMbit: Double = 1000
    @Option(help: ArgumentHelp("Queue the QUIC primary's bulk streams may keep at the bottleneck while reads are answered, in ms, or off (default: the transport's, 2.5).", valueName: "ms|off"))
    var bulkQueue: String?
    @Option(help: "Folder for the JSON and CSV of the run and the plots (default bench/results, or bench/results/tmp with --quick).")
    var output: String?
    @Option(help: "Markdown file whose bench-wan section is regenerated (default bench/RESULTS.md; not touched by --quick unless given).")
    var resultsMarkdown: String?
    @Flag(help: "Skip the PNG plots.")
    var noPlots = false
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    func validate() throws {
        if let lanes {
            guard let values = Self.numbers(lanes),
                  values.allSatisfy({ $0 >= 1 && $0 <= Double(FrameLimits.maxLanes) && $0 == $0.rounded() }) else {
                throw ValidationError("--lanes takes whole numbers from 1 to \(FrameLimits.maxLanes), comma-separated: \(lanes)")
            }
        }
        for (name, text) in [("--rtt", rtt), ("--loss", loss)] {
            guard let text else { continue }
            guard let values = Self.numbers(text), values.allSatisfy({ $0 >= 0 }) else {
                throw ValidationError("\(name) takes non-negative numbers, comma-separated: \(text)")
            }
            if name == "--loss", values.contains(where: { $0 >= 100 }) { throw ValidationError("--loss must be below 100") }
        }
        if let regions {
            guard let values = Self.numbers(regions), values.allSatisfy({ $0 >= 1 && $0 <= 64 && $0 == $0.rounded() }) else {
                throw ValidationError("--regions takes whole numbers 1...64, comma-separated: \(regions)")
            }
        }
        guard !kinds.isEmpty, kinds.count == transports.split(separator: ",").count else {
            throw ValidationError("--transports takes quic, tcp and tcp-per-region, comma-separated")
        }
        guard !controllers.isEmpty, controllers.count == cc.split(separator: ",").count else {
            throw ValidationError("--cc takes \(QUICConfiguration.CongestionControl.choices), comma-separated")
        }
        if let runs, runs < 1 { throw ValidationError("--runs must be at least 1") }
        guard contents.count == content.split(separator: ",").count, !contents.isEmpty else {
            throw ValidationError("--content takes \(BenchContent.allCases.map(\.rawValue).joined(separator: ", ")), comma-separated")
        }
        guard wireModes.count == wire.split(separator: ",").count, !wireModes.isEmpty else {
            throw ValidationError("--wire takes pages, pages-lz4, pages-zstd and plain, comma-separated")
        }
        if let bulkSize, parseByteSize(bulkSize) == nil { throw ValidationError("--bulk-size: not a byte count: \(bulkSize)") }
        if let burstSize, parseByteSize(burstSize) == nil { throw ValidationError("--burst-size: not a byte count: \(burstSize)") }
        if let bulkSeconds, !(bulkSeconds > 0) { throw ValidationError("--bulk-seconds must be positive") }
        guard (1...256).contains(readers) else { throw ValidationError("--readers must be 1...256") }
        guard rateMbit >= 0 else { throw ValidationError("--rate-mbit must not be negative") }
        if let bulkQueue, BulkQueueSetting(text: bulkQueue) == nil {
            throw ValidationError("--bulk-queue takes milliseconds (0...1000) or off")
        }
    }

    private static func numbers(_ text: String) -> [Double]? {
        let parts = text.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else { return nil }
        return parts.map { $0! }
    }

    private var contents: [BenchContent] { content.split(separator: ",").compactMap { BenchContent(rawValue: String($0)) } }
    private var wireModes: [WANWireMode] { wire.split(separator: ",").compactMap { WANWireMode(rawValue: String($0)) } }
    private var kinds: [TransportKind] { transports.split(separator: ",").compactMap { TransportKind(rawValue: String($0)) } }
    private var controllers: [QUICConfiguration.CongestionControl] {
        cc.split(separator: ",").compactMap { QUICConfiguration.CongestionControl(rawValue: String($0)) }
    }

    func run() async throws {
        guard geteuid() == 0 else {
            throw BenchWANFailure("bench wan needs root: it creates network namespaces and TUN devices")
        }
        var options = quick ? WANBenchmark.Options.quick : WANBenchmark.Options()
        if let rtt { options.rttsMilliseconds = Self.numbers(rtt)! }
        if let loss { options.lossPercents = Self.numbers(loss)! }
        if let regions { options.regionCounts = Self.numbers(regions)!.map { Int($0) } }
        options.transports = kinds
        options.congestionControls = controllers
        options.contents = contents
        options.wireModes = wireModes
        if let lanes { options.laneCounts = Self.numbers(lanes)!.map { Int($0) } }
        if let runs { options.runs = runs }
        if let bulkSize { options.bulkBytes = parseByteSize(bulkSize)! }
        if let burstSize { options.burstBytes = parseByteSize(burstSize)! }
        if let bulkSeconds { options.bulkTimeLimit = .milliseconds(Int64(bulkSeconds * 1000)) }
        options.readers = readers
        options.rateBitsPerSecond = rateMbit > 0 ? UInt64(rateMbit * 1e6) : nil
        if let bulkQueue = bulkQueue.flatMap(BulkQueueSetting.init(text:)) {
            options.bulkQueueAllowance = bulkQueue.allowance
        }

        let out = BenchOutput(json: json)
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("memreplica-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        let scenarios = options.scenarios.count
        out.progress("bench wan: \(scenarios) scenario\(scenarios == 1 ? "" : "s") × \(options.transports.count) transports × \(options.runs) run\(options.runs == 1 ? "" : "s")")
        let report = try await WANBenchmark(options: options, workDirectory: work, log: out.progress).run()

        let stamp = Self.stamp()
        let writer = WANResultsWriter(report: report, stamp: stamp)
        let directory = output ?? (quick ? "bench/results/tmp" : "bench/results")
        let files = try writer.writeRunFiles(into: directory)
        out.progress("wrote \(files.json) and \(files.csv)")
        var plots: [String] = []
        if !noPlots {
            plots = try Self.plot(json: files.json, prefix: directory + "/" + writer.baseName, log: out.progress)
        }
        if let markdown = resultsMarkdown ?? (quick ? nil : "bench/RESULTS.md") {
            let base = URL(fileURLWithPath: markdown).deletingLastPathComponent().standardizedFileURL.path
            let relative = plots.map { Self.relativePath(of: $0, from: base) }
            try writer.updateMarkdown(at: markdown, plots: relative)
            out.progress("updated \(markdown)")
        }
        if try out.printJSON(report) { return }
        print("")
        for t in report.targets {
            print("\(t.met ? "met    " : "NOT met") \(t.target) [\(t.scenario)]: \(t.measured)")
        }
        if quick {
            let problems = report.sanityProblems(transports: options.transports)
            guard problems.isEmpty else {
                throw BenchWANFailure("quick run produced insane numbers: " + problems.joined(separator: "; "))
            }
            print("quick run: every transport produced sane numbers")
        }
    }

    static func stamp() -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f.string(from: Date())
    }

    /// Runs bench/plot_wan.py (found from the current folder or beside the
    /// executable's checkout) on Debian's python3 with matplotlib.
    static func plot(json: String, prefix: String, log: @Sendable (String) -> Void) throws -> [String] {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var candidates = [FileManager.default.currentDirectoryPath + "/bench/plot_wan.py"]
        var dir = executable.deletingLastPathComponent()
        for _ in 0..<5 {
            candidates.append(dir.path + "/bench/plot_wan.py")
            dir = dir.deletingLastPathComponent()
        }
        guard let script = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            log("plots skipped: bench/plot_wan.py not found (run from the repository)")
            return []
        }
        let python = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [python, script, json, prefix]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw BenchWANFailure("plotting failed (python3-matplotlib installed? scripts/install-deps.sh installs it): "
                                  + (text.split(separator: "\n").last.map(String.init) ?? "exit \(process.terminationStatus)"))
        }
        let files = [prefix + "-latency.png", prefix + "-throughput.png"]
        log("wrote \(files.joined(separator: " and "))")
        return files
    }

    static func relativePath(of path: String, from base: String) -> String {
        let full = URL(fileURLWithPath: path).standardizedFileURL.path
        return full.hasPrefix(base + "/") ? String(full.dropFirst(base.count + 1)) : full
    }
}

struct BenchWANFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
