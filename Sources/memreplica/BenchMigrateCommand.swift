import MemReplica
import MemReplicaBench
import MemReplicaQUIC
import ArgumentParser
import Foundation

struct BenchMigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrations between two peers in this process while a writer runs: downtime, total time, bytes sent.",
        discussion: """
            Each run: a fresh region (memfd) with random content, a second peer mirroring it, a writer \
            storing into random 4 KiB pages at the given rate, then a hand-over in each --mode. The downtime is \
            from the freeze of the writer until the destination owns the region. After post-copy a reader at \
            the new owner touches 256 random pages during the fill: the faults it takes are timed. Every run checks that \
            the destination's bytes equal the source's frozen state (SHA-256). --rtt and --loss run the \
            cells through the WAN emulator (needs root; the initial sync runs over a lossless link).
            """)

    @Option(help: "Region size (suffixes K, M, G).")
    var size: String = "1G"
    @Option(help: "Chunk size: a power of two from 4K to 1M (a 4 KiB page write dirties one chunk).")
    var chunk: String = "64K"
    @Option(help: ArgumentHelp("Writer rates in MB/s of random 4 KiB pages, comma-separated (0: idle).", valueName: "rates"))
    var writers: String = "0,10,100"
    @Flag(help: "Add a cyclic writer: 100 MB/s bursts of 0.5 s every 2 s.")
    var cyclic = false
    @Option(help: ArgumentHelp("Emulated RTTs in ms, comma-separated (none: loopback only).", valueName: "ms"))
    var rtt: String = ""
    @Option(help: ArgumentHelp("Loss percentages for the emulated links, comma-separated.", valueName: "percent"))
    var loss: String = "0"
    @Option(help: ArgumentHelp("Modes, comma-separated: precopy, postcopy, hybrid.", valueName: "modes"))
    var mode: String = "precopy,postcopy,hybrid"
    @Option(help: ArgumentHelp("Timings, comma-separated: now, quiet (a cyclic writer runs 8 s first either way).", valueName: "timings"))
    var when: String = "now"
    @Option(help: "Migrations per cell.")
    var runs: Int = 3
    @Option(name: .customLong("max-downtime"), help: ArgumentHelp("The downtime budget.", valueName: "ms"))
    var maxDowntime: Double = MigrationRequest.defaultMaxDowntimeMilliseconds
    @Option(help: ArgumentHelp("Abort a migration after this long.", valueName: "seconds"))
    var timeout: Double = 60
    @Option(help: "Congestion controller for QUIC: bbr, bbr1, cubic or reno.")
    var cc: String = "bbr"
    @Option(help: "Compare the copies before the commit or after it (see memreplica migrate --verify).")
    var verify: String = "before"
    @Flag(help: "A small run for CI: 64 MiB, a 10 MB/s writer, loopback, one run per mode.")
    var quick = false
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    func validate() throws {
        guard parseByteSize(size) != nil else { throw ValidationError("bad --size") }
        guard let c = parseByteSize(chunk), c >= 4096, c <= 1 << 20, c & (c - 1) == 0 else {
            throw ValidationError("--chunk must be a power of two from 4K to 1M")
        }
        guard MigrationRequest.Verification(rawValue: verify) != nil else { throw ValidationError("--verify must be before or after") }
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
        guard Self.timings(when) != nil else { throw ValidationError("--when takes now and quiet, comma-separated") }
        guard Self.modes(mode) != nil else { throw ValidationError("--mode takes precopy, postcopy and hybrid, comma-separated") }
        guard QUICConfiguration.CongestionControl(rawValue: cc) != nil else { throw ValidationError("--cc must be \(QUICConfiguration.CongestionControl.choices)") }
        guard Self.numbers(writers) != nil, Self.numbers(rtt) != nil, Self.numbers(loss) != nil else {
            throw ValidationError("--writers, --rtt and --loss take comma-separated numbers")
        }
    }

    static func modes(_ text: String) -> [MigrationMode]? {
        let parts = text.split(separator: ",").map { MigrationMode(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
        return parts.isEmpty || parts.contains(nil) ? nil : parts.compactMap { $0 }
    }

    static func timings(_ text: String) -> [MigrationRequest.Timing]? {
        let parts = text.split(separator: ",").map { MigrationRequest.Timing(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
        return parts.isEmpty || parts.contains(nil) ? nil : parts.compactMap { $0 }
    }

    static func numbers(_ text: String) -> [Double]? {
        let parts = text.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) ? nil : parts.compactMap { $0 }
    }

    func run() async throws {
        var options = MigrationBenchmark.Options()
        options.regionBytes = parseByteSize(quick ? "64M" : size)!
        options.runs = quick ? 1 : runs
        options.chunkSize = parseByteSize(chunk)!
        options.maxDowntimeMilliseconds = maxDowntime
        options.timeoutSeconds = timeout
        options.congestionControl = QUICConfiguration.CongestionControl(rawValue: cc)!
        options.verify = MigrationRequest.Verification(rawValue: verify)!
        options.modes = Self.modes(mode)!
        options.timings = quick ? [.now] : Self.timings(when)!
        options.writers = (quick ? [10] : Self.numbers(writers)!).map { $0 == 0 ? .idle : .pages(bytesPerSecond: $0 * 1e6) }
        if cyclic && !quick { options.writers.append(.cyclic(bytesPerSecond: 100e6, burstSeconds: 0.5, periodSeconds: 2)) }
        let rtts = quick ? [] : Self.numbers(rtt)!
        options.links = [.loopback] + rtts.flatMap { r in Self.numbers(loss)!.map { .init(rttMilliseconds: r, lossPercent: $0) } }
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("memreplica-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        let report = try await MigrationBenchmark(options: options, workDirectory: work, log: BenchOutput(json: json).progress).run()
        if try BenchOutput(json: json).printJSON(report) {
            if report.cells.contains(where: { !$0.allLossless }) { throw ExitCode(1) }
            return
        }
        func ms(_ v: Double?) -> String { v.map { String(format: "%.1f", $0) } ?? "-" }
        print("")
        print("migration of \(report.regionBytes >> 20) MiB (\(report.chunkSize >> 10) KiB chunks), "
              + "--max-downtime \(ms(report.maxDowntimeMilliseconds)) ms, pre-copy --verify \(report.verify), QUIC \(report.congestionControl):")
        print("  link                  writer                  mode      when   downtime p50 / max   target   total p50   sent/region  re-sent"
              + "  post  fill p50  fault p50 / max   lossless")
        for c in report.cells {
            func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
                let fill = String(repeating: " ", count: max(0, width - text.count))
                return right ? fill + text : text + fill
            }
            let line = "  " + pad(c.link, 22) + pad(c.writer, 24) + pad(c.mode, 10) + pad(c.when, 6)
                + pad(ms(c.downtimeP50Milliseconds), 12, right: true) + " / " + pad(ms(c.downtimeMaxMilliseconds), 8) + " ms"
                + pad(ms(c.downtimeTargetMilliseconds), 7, right: true) + " ms"
                + pad(c.totalSecondsP50.map { String(format: "%.2f", $0) } ?? "-", 9, right: true) + " s"
                + pad(c.bytesSentPerRegionByte.map { String(format: "%.2f×", $0) } ?? "-", 13, right: true)
                + pad(c.chunksResentP50.map(String.init) ?? "-", 9, right: true)
                + pad("\(c.postcopyRuns)/\(c.runs.count)", 6, right: true)
                + pad(c.fillSecondsP50.map { String(format: "%.2f s", $0) } ?? "-", 10, right: true)
                + pad(ms(c.faultP50Milliseconds), 11, right: true) + " / " + pad(ms(c.faultMaxMilliseconds), 6) + " ms"
                + "   " + (c.allLossless ? "yes" : "NO")
            print(line)
            for run in c.runs where !run.handedOver {
                print("    \(run.report.outcome): \(run.report.reason ?? "")")
            }
        }
        if report.cells.contains(where: { !$0.allLossless }) { throw ExitCode(1) }
    }
}
