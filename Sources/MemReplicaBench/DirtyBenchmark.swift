import MemReplica
import LinuxShim
import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `memreplica bench dirty`: the cost of finding what changed, both
/// trackers on the same region and the same writes, in one run.
/// - A memfd region (1 GiB by default) filled with bytes; each round writes
///   one byte into a random 1 % of its pages, then the userfaultfd tracker
///   and the hash scanner each scan (timed by their own scan statistics).
/// - Every round both must report exactly the chunks written, or the run
///   fails.
/// - Also timed: arming (registering and write-protecting the region) and
///   the cost of a page's first write, armed (a write-protect fault the
///   kernel resolves) and not armed.
/// `Report.meetsScanTarget` and `meetsSpeedupTarget` check the design
/// targets: a uffd scan ≤ 1 ms, ≥ 100× faster than hashing
/// (bench/RESULTS.md says where each target came from).
public struct DirtyBenchmark {
    public struct Options: Sendable {
        public var regionBytes = 1 << 30
        public var chunkSize = ExportSpec.defaultChunkSize
        /// Share of the region's pages written per round, in percent.
        public var dirtyPercent = 1.0
        public var rounds = 30
        public init() {}
    }

    public struct Report: Codable, Sendable {
        public var kernel: String
        public var regionBytes: Int
        public var chunkSize: Int
        public var pageSize: Int
        public var rounds: Int
        public var pagesWrittenPerRound: Int
        public var dirtyPercent: Double
        public var userfaultfdFeatures: String
        public var armMilliseconds: Double
        public var uffdScanMedianMilliseconds: Double
        public var uffdScanP99Milliseconds: Double
        public var uffdScanMaxMilliseconds: Double
        public var hashScanMedianMilliseconds: Double
        public var hashScanP99Milliseconds: Double
        public var hashScanMaxMilliseconds: Double
        /// Median hash scan time over median uffd scan time.
        public var speedup: Double
        public var chunksChangedMedian: Int
        /// Rounds where both trackers reported exactly the written chunks (all, or the run fails).
        public var roundsAgreeing: Int
        public var firstWriteNanosecondsUnarmed: Double
        public var firstWriteNanosecondsArmed: Double
        public var meetsScanTarget: Bool
        public var meetsSpeedupTarget: Bool
        /// One pass over the whole region with each chunk hash, medians of
        /// `hashPasses` interleaved passes: GMAC (keyed, what the hash
        /// scanner and HAVE use), XXH64 (unkeyed, used before), SHA-256.
        public var hashPasses: Int
        public var gmacPassMedianMilliseconds: Double
        public var xxh64PassMedianMilliseconds: Double
        public var sha256PassMedianMilliseconds: Double
        /// GMAC's pass over XXH64's (the design bound: within 2 ×).
        public var gmacOverXXH64: Double
        public var sha256OverXXH64: Double
    }

    public struct Disagreement: Error, CustomStringConvertible {
        public let round: Int
        public let detail: String
        public var description: String { "round \(round): \(detail)" }
    }

    public let options: Options
    let log: @Sendable (String) -> Void

    public init(options: Options, log: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.log = log
    }

    public func run() throws -> Report {
        let region = try Region(name: "dirty-bench", backing: .memory, size: options.regionBytes, chunkSize: options.chunkSize)
        fillPattern(region.bytes, seed: 9)
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let pages = (options.regionBytes + pageSize - 1) / pageSize
        let perRound = max(1, Int((Double(pages) * options.dirtyPercent / 100).rounded()))
        var rng = SystemRandomNumberGenerator()
        func pick() -> [Int] {
            var picked = Set<Int>()
            while picked.count < perRound { picked.insert(Int.random(in: 0..<pages, using: &rng)) }
            return picked.sorted()
        }
        /// Writes one byte into each page; nanoseconds per page.
        func write(_ chosen: [Int]) -> Double {
            let bytes = region.bytes
            let start = ContinuousClock.now
            for p in chosen {
                let offset = min(p * pageSize + (p &* 977) % pageSize, bytes.count - 1)
                bytes[offset] &+= 1
            }
            return (ContinuousClock.now - start).seconds * 1e9 / Double(chosen.count)
        }
        // A page's write before arming: a plain store (the pages are populated).
        let unarmed = write(pick())

        let hasher = ChunkHashScanner(region: region)
        let armStart = ContinuousClock.now
        let tracker = try WriteProtectTracker(region: region)
        let armMilliseconds = (ContinuousClock.now - armStart).milliseconds
        log("kernel \(Self.kernelRelease()), uffd features 0x\(String(tracker.features, radix: 16)); armed \(options.regionBytes >> 20) MiB in \(String(format: "%.2f", armMilliseconds)) ms")

        var uffdTimes: [Double] = [], hashTimes: [Double] = [], writeCosts: [Double] = [], changed: [Int] = []
        for round in 1...options.rounds {
            let chosen = pick()
            writeCosts.append(write(chosen))
            let expected = Array(Set(chosen.map { $0 * pageSize / options.chunkSize })).sorted()
            let byUffd = try tracker.changedChunks()
            let uffdTime = tracker.statistics.lastDuration.milliseconds
            let byHash = try hasher.changedChunks()
            let hashTime = hasher.statistics.lastDuration.milliseconds
            guard byUffd == expected, byHash == expected else {
                throw Disagreement(round: round, detail: """
                    \(expected.count) chunks written; userfaultfd reported \(byUffd.count) \
                    (missed \(Set(expected).subtracting(byUffd).count), extra \(Set(byUffd).subtracting(expected).count)), \
                    hash scanner \(byHash.count) (missed \(Set(expected).subtracting(byHash).count), \
                    extra \(Set(byHash).subtracting(expected).count))
                    """)
            }
            uffdTimes.append(uffdTime)
            hashTimes.append(hashTime)
            changed.append(expected.count)
            log("round \(round): \(chosen.count) pages in \(expected.count) chunks; userfaultfd \(String(format: "%.3f", uffdTime)) ms, hash \(String(format: "%.1f", hashTime)) ms; agree")
        }
        func pct(_ values: [Double], _ p: Double) -> Double {
            let sorted = values.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
        }
        let uffdMedian = median(uffdTimes), hashMedian = median(hashTimes)
        let speedup = hashMedian / uffdMedian
        let passes = hashPasses(over: region)
        log("one pass over \(options.regionBytes >> 20) MiB: GMAC \(String(format: "%.1f", passes.gmac)) ms, "
            + "XXH64 \(String(format: "%.1f", passes.xxh64)) ms, SHA-256 \(String(format: "%.1f", passes.sha256)) ms")
        return Report(
            kernel: Self.kernelRelease(), regionBytes: options.regionBytes, chunkSize: options.chunkSize,
            pageSize: pageSize, rounds: options.rounds, pagesWrittenPerRound: perRound, dirtyPercent: options.dirtyPercent,
            userfaultfdFeatures: "0x" + String(tracker.features, radix: 16), armMilliseconds: armMilliseconds,
            uffdScanMedianMilliseconds: uffdMedian, uffdScanP99Milliseconds: pct(uffdTimes, 0.99),
            uffdScanMaxMilliseconds: uffdTimes.max() ?? 0,
            hashScanMedianMilliseconds: hashMedian, hashScanP99Milliseconds: pct(hashTimes, 0.99),
            hashScanMaxMilliseconds: hashTimes.max() ?? 0, speedup: speedup,
            chunksChangedMedian: Int(median(changed.map(Double.init))), roundsAgreeing: options.rounds,
            firstWriteNanosecondsUnarmed: unarmed, firstWriteNanosecondsArmed: median(writeCosts),
            meetsScanTarget: uffdMedian <= 1, meetsSpeedupTarget: speedup >= 100,
            hashPasses: Self.hashPassCount, gmacPassMedianMilliseconds: passes.gmac, xxh64PassMedianMilliseconds: passes.xxh64,
            sha256PassMedianMilliseconds: passes.sha256, gmacOverXXH64: passes.gmac / passes.xxh64,
            sha256OverXXH64: passes.sha256 / passes.xxh64)
    }

    static let hashPassCount = 5

    /// Medians of whole-region passes with each hash, taking turns.
    private func hashPasses(over region: Region) -> (gmac: Double, xxh64: Double, sha256: Double) {
        let hasher = ChunkHasher(key: .random())
        let chunks = region.geometry.chunkCount
        func chunk(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: region.bytes[region.geometry.byteRange(ofChunk: i)!]) }
        func time(_ pass: () -> UInt64) -> Double {
            let start = ContinuousClock.now
            let sink = pass()
            let elapsed = (ContinuousClock.now - start).milliseconds
            return sink == 1 ? elapsed + 0 : elapsed  // keeps the work
        }
        var gmac: [Double] = [], xxh: [Double] = [], sha: [Double] = []
        for _ in 0..<Self.hashPassCount {
            gmac.append(time { (0..<chunks).reduce(0) { $0 ^ hasher.hash(chunk($1)).low } })
            xxh.append(time { (0..<chunks).reduce(0) { $0 ^ XXH64Reference.hash(chunk($1)) } })
            sha.append(time { (0..<chunks).reduce(0) { $0 ^ UInt64(SHA256.hash(data: chunk($1)).first { _ in true } ?? 0) } })
        }
        return (median(gmac), median(xxh), median(sha))
    }

    static func kernelRelease() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }
}
