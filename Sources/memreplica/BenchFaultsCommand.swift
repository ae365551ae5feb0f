import MemReplica
import MemReplicaBench
import ArgumentParser
import Foundation

struct BenchFaultsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "faults",
        abstract: "Post-copy fault latency over QUIC on loopback, idle and while a bulk sync shares the connection.")

    @Option(help: "Size of the lazy region (suffixes K, M, G).")
    var size: String = "256M"
    @Option(help: "Faults timed per phase.")
    var faults: Int = 2000
    @Option(help: "Size of the region whose initial sync runs during the second phase.")
    var bulk: String = "1G"
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    func validate() throws {
        guard parseByteSize(size) != nil, parseByteSize(bulk) != nil else { throw ValidationError("bad --size or --bulk") }
        guard faults >= 1 else { throw ValidationError("--faults must be at least 1") }
    }

    func run() async throws {
        var options = FaultBenchmark.Options()
        options.regionBytes = parseByteSize(size)!
        options.bulkBytes = parseByteSize(bulk)!
        options.faults = faults
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("memreplica-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        let report = try await FaultBenchmark(options: options, workDirectory: work, log: BenchOutput(json: json).progress).run()
        if try BenchOutput(json: json).printJSON(report) { return }
        func us(_ v: Double) -> String { String(format: "%.1f", v) }
        func row(_ name: String, _ l: FaultBenchmark.Latency) -> String {
            "  \(name)  p50 \(us(l.p50Microseconds)) µs  p90 \(us(l.p90Microseconds))  p99 \(us(l.p99Microseconds))  p999 \(us(l.p999Microseconds))  max \(us(l.maxMicroseconds))"
        }
        print("")
        print("post-copy faults, \(report.chunkSize >> 10) KiB chunks, \(report.idle.samples) per phase:")
        print(row("floor     ", report.floor) + "  (bare userfaultfd, a second process over UDP)")
        print(row("idle      ", report.idle))
        print(row("attached  ", report.attached))
        print(row("under bulk", report.underBulk))
        print("  bulk sync of \(report.bulkBytes >> 20) MiB \(report.bulkRanThroughout ? "ran throughout" : "FINISHED before the last fault")")
        print(String(format: "  idle / floor: p50 %.2f×, p99 %.2f× (target ≤ 1.5×, ≤ 3×): %@", report.idleP50OverFloor,
                     report.idleP99OverFloor, report.meetsIdleTarget ? "met" : "MISSED"))
        print("  under bulk p99 ≤ 1 ms: \(report.meetsBulkTarget ? "met" : "MISSED")")
    }
}
