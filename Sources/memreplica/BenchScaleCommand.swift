import MemReplica
import MemReplicaBench
import MemReplicaQUIC
import ArgumentParser
import Foundation

struct BenchScaleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "How cost grows with the work: many regions on one connection, large regions, many mirrors of one.",
        discussion: """
            Two or more peers in this process over QUIC on loopback, each case from nothing. Regions: N regions \
            of --region-size mirrored by one peer (one connection): time until all replicas equal their \
            primaries, aggregate MB/s, lag of one write into every region, anonymous memory per region. Sizes: \
            one region of each size (sizes above 8 GiB filled one chunk in four, the rest holes, and mirrored to \
            a file on disk: a replica reserves its whole size): sync, the dirty scan finding 1 % of chunks written, memory overhead, CPU per GiB. \
            Fan-out: one region mirrored by several peers: time, bytes sent per mirror, CPU per mirror. Every \
            replica is compared with its primary byte for byte; a difference exits 1.
            """)

    @Option(help: ArgumentHelp("Region counts, comma-separated.", valueName: "counts"))
    var regions: String = "1,16,256,1024"
    @Option(name: .customLong("region-size"), help: "Size of each region in the region-count cases.")
    var regionSize: String = "1M"
    @Option(help: ArgumentHelp("Single-region sizes, comma-separated (suffixes K, M, G).", valueName: "sizes"))
    var sizes: String = "1G,4G,8G,16G"
    @Option(help: ArgumentHelp("Mirror counts for one region, comma-separated.", valueName: "counts"))
    var mirrors: String = "1,4,16"
    @Option(name: .customLong("fan-out-size"), help: "Size of the region the fan-out cases mirror.")
    var fanOutSize: String = "256M"
    @Option(help: "Congestion controller for QUIC: bbr, bbr1, cubic or reno.")
    var cc: String = "bbr"
    @Flag(help: "A small run for CI: 1, 16 and 128 regions, 256 MiB, 1 and 4 mirrors of 64 MiB.")
    var quick = false
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    static func counts(_ text: String) -> [Int]? {
        let parts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) || parts.contains(where: { $0! < 1 }) ? nil : parts.compactMap { $0 }
    }

    static func byteSizes(_ text: String) -> [Int]? {
        let parts = text.split(separator: ",").map { parseByteSize($0.trimmingCharacters(in: .whitespaces)) }
        return parts.contains(nil) ? nil : parts.compactMap { $0 }
    }

    func validate() throws {
        guard Self.counts(regions) != nil, Self.counts(mirrors) != nil else {
            throw ValidationError("--regions and --mirrors take comma-separated positive counts")
        }
        guard Self.byteSizes(sizes) != nil, parseByteSize(regionSize) != nil, parseByteSize(fanOutSize) != nil else {
            throw ValidationError("bad --sizes, --region-size or --fan-out-size")
        }
        guard QUICConfiguration.CongestionControl(rawValue: cc) != nil else {
            throw ValidationError("--cc must be \(QUICConfiguration.CongestionControl.choices)")
        }
    }

    func run() async throws {
        var options = ScaleBenchmark.Options()
        options.regionCounts = quick ? [1, 16, 128] : Self.counts(regions)!
        options.bytesPerRegion = parseByteSize(regionSize)!
        options.sizes = quick ? [256 << 20] : Self.byteSizes(sizes)!
        options.fanOut = quick ? [1, 4] : Self.counts(mirrors)!
        options.fanOutBytes = quick ? 64 << 20 : parseByteSize(fanOutSize)!
        options.congestionControl = QUICConfiguration.CongestionControl(rawValue: cc)!
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("memreplica-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        let output = BenchOutput(json: json)
        let report = try await ScaleBenchmark(options: options, workDirectory: work, log: output.progress).run()
        let exact = report.regions.allSatisfy(\.exact) && report.sizes.allSatisfy(\.exact) && report.fanOut.allSatisfy(\.exact)
        if try output.printJSON(report) {
            if !exact { throw ExitCode(1) }
            return
        }
        print("")
        if let ratio = report.manyRegionsThroughputRatio, let many = report.regions.last {
            print(String(format: "aggregate throughput at %d regions is %.2f× that at 16 (target ≥ 0.8×): %@",
                         many.regions, ratio, ratio >= 0.8 ? "met" : "MISSED"))
        }
        if let worst = report.sizes.map(\.anonymousOverheadPercent).max() {
            print(String(format: "peer memory overhead at most %.3f %% of the region (target ≤ 0.5 %%): %@",
                         worst, worst <= 0.5 ? "met" : "MISSED"))
        }
        print("every replica equals its primary: \(exact ? "yes" : "NO")")
        if !exact { throw ExitCode(1) }
    }
}
