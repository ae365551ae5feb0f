import MemReplica
import MemReplicaBench
import ArgumentParser
import Foundation

struct BenchDirtyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dirty",
        abstract: "Dirty-page scan cost: the userfaultfd tracker beside the hash scanner, same region and writes.")

    @Option(help: "Region size (suffixes K, M, G).")
    var size: String = "1G"
    @Option(help: "Chunk size (power of two, 4K to 1M).")
    var chunk: String = "64K"
    @Option(help: "Percent of the region's pages written per round.")
    var percent: Double = 1
    @Option(help: "Rounds (write, then both scans).")
    var rounds: Int = 30
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    func validate() throws {
        guard parseByteSize(size) != nil, parseByteSize(chunk) != nil else { throw ValidationError("bad --size or --chunk") }
        guard percent > 0, percent <= 100 else { throw ValidationError("--percent must be in (0, 100]") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
    }

    func run() throws {
        var options = DirtyBenchmark.Options()
        options.regionBytes = parseByteSize(size)!
        options.chunkSize = parseByteSize(chunk)!
        options.dirtyPercent = percent
        options.rounds = rounds
        let report = try DirtyBenchmark(options: options, log: BenchOutput(json: json).progress).run()
        if try BenchOutput(json: json).printJSON(report) { return }
        func ms(_ v: Double) -> String { String(format: "%.3f", v) }
        print("")
        print("dirty scan of \(report.regionBytes >> 20) MiB, \(report.pagesWrittenPerRound) pages (\(report.dirtyPercent) %) written per round, \(report.rounds) rounds, kernel \(report.kernel):")
        print("  userfaultfd tracker  median \(ms(report.uffdScanMedianMilliseconds)) ms  p99 \(ms(report.uffdScanP99Milliseconds)) ms  max \(ms(report.uffdScanMaxMilliseconds)) ms")
        print("  hash scanner         median \(ms(report.hashScanMedianMilliseconds)) ms  p99 \(ms(report.hashScanP99Milliseconds)) ms  max \(ms(report.hashScanMaxMilliseconds)) ms")
        print("  ratio hash/userfaultfd: \(String(format: "%.0f", report.speedup))×; both reported the written chunks in \(report.roundsAgreeing) of \(report.rounds) rounds")
        print("  first write to a page: \(String(format: "%.0f", report.firstWriteNanosecondsArmed)) ns armed, \(String(format: "%.0f", report.firstWriteNanosecondsUnarmed)) ns not; arming took \(ms(report.armMilliseconds)) ms")
        print("  targets: scan ≤ 1 ms \(report.meetsScanTarget ? "met" : "MISSED"), ≥ 100× \(report.meetsSpeedupTarget ? "met" : "MISSED")")
        print("  one pass, medians of \(report.hashPasses): GMAC (keyed, in use) \(String(format: "%.1f", report.gmacPassMedianMilliseconds)) ms, "
              + "XXH64 (before) \(String(format: "%.1f", report.xxh64PassMedianMilliseconds)) ms, "
              + "SHA-256 \(String(format: "%.1f", report.sha256PassMedianMilliseconds)) ms: "
              + "GMAC/XXH64 \(String(format: "%.2f", report.gmacOverXXH64)) × (bound 2 ×), SHA-256/XXH64 \(String(format: "%.2f", report.sha256OverXXH64)) ×")
    }
}
