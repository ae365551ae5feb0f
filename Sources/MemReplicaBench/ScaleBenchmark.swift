import LinuxShim
import MemReplica
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import Foundation
import Logging

/// `memreplica bench scale`: how cost grows with the work, two peers in
/// this process over QUIC on loopback, each case from nothing:
/// - regions: N regions on one connection (all mirrored by one peer):
///   time until every replica equals its primary, aggregate throughput,
///   per-region replication lag of one write into every region, and the
///   anonymous memory both peers hold per region;
/// - sizes: one region of each size: initial sync, the dirty scan that
///   finds 1 % of its chunks written, peer memory beyond the mapped bytes
///   and CPU per GiB;
/// - fan-out: one region mirrored by 1, 4, 16 peers: time until all are
///   synced, the primary's bytes sent per mirror, CPU per mirror.
/// Every case compares each replica with its primary byte for byte.
public struct ScaleBenchmark {
    public struct Options: Sendable {
        public var regionCounts = [1, 16, 256, 1024]
        public var bytesPerRegion = 1 << 20
        public var sizes = [1 << 30, 4 << 30, 8 << 30, 16 << 30]
        /// Sizes above this are filled sparsely (one chunk in `sparseStride`
        /// random, the rest holes) and mirrored to a file on disk, so both
        /// fit on this host.
        public var denseLimit = 8 << 30
        public var sparseStride = 4
        public var fanOut = [1, 4, 16]
        public var fanOutBytes = 256 << 20
        public var chunkSize = 64 << 10
        public var congestionControl = QUICConfiguration.CongestionControl.bbr
        public init() {}
    }

    public struct RegionsCase: Codable, Sendable {
        public var regions: Int
        public var bytesPerRegion: Int
        public var syncSeconds: Double
        public var aggregateMegabytesPerSecond: Double
        /// Write → replica holds it, one write into every region at once.
        public var lagP50Milliseconds: Double
        public var lagP99Milliseconds: Double
        /// Both peers' anonymous memory (not the regions' mappings) while
        /// they follow the synced regions, over what the process held
        /// before they started, per region (`ProcessMemory.followingAnonymousBytes`).
        public var anonymousBytesPerRegion: Double
        /// The same taken the moment the last replica synced, without
        /// trimming: adds the bytes in flight and what the allocator keeps.
        public var anonymousBytesPerRegionAtSync: Double
        public var cpuSeconds: Double
        public var connections: Int
        public var exact: Bool
    }

    public struct SizeCase: Codable, Sendable {
        public var regionBytes: Int
        /// The replica was a file on disk (/var/tmp), not in /dev/shm.
        public var replicaOnDisk: Bool
        /// Bytes of random content; the rest are holes (zero chunks).
        public var dataBytes: Int
        public var syncSeconds: Double
        /// The floor beside it: the host making one copy's pages (the data
        /// chunks' pages of a fresh memfd, MADV_POPULATE_WRITE), timed on
        /// the primary just before it is filled. The replica pays the same
        /// during the sync; on a VM, first touch of memory costs more per
        /// GiB the more of it a process takes.
        public var allocateSeconds: Double
        public var dataMegabytesPerSecond: Double
        public var dirtyChunks: Int
        /// The tracker's scan that found the 1 % written.
        public var scanMilliseconds: Double
        /// Anonymous memory both peers hold while following the synced
        /// region, beyond what the process held before, as a share of the
        /// region (`ProcessMemory.followingAnonymousBytes`).
        public var anonymousOverheadPercent: Double
        /// The same taken the moment the replica synced, without trimming:
        /// adds the bytes in flight and what the allocator keeps.
        public var anonymousAtSyncPercent: Double
        public var cpuSecondsPerGiB: Double
        public var exact: Bool
    }

    public struct FanOutCase: Codable, Sendable {
        public var mirrors: Int
        public var regionBytes: Int
        public var syncSeconds: Double
        /// Wire bytes the primary's region streams sent, per mirror and region byte.
        public var sentPerMirrorPerRegionByte: Double
        /// The whole process's CPU (primary and all mirrors), per mirror.
        public var cpuSecondsPerMirror: Double
        public var exact: Bool
    }

    public struct Report: Codable, Sendable {
        public var chunkSize: Int
        public var congestionControl: String
        public var regions: [RegionsCase]
        public var sizes: [SizeCase]
        public var fanOut: [FanOutCase]
        /// Aggregate throughput at the most regions over that at 16 (the target is ≥ 0.8).
        public var manyRegionsThroughputRatio: Double?
    }

    public let options: Options
    let peers: BenchPeers
    let work: String
    let log: @Sendable (String) -> Void

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        work = workDirectory
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    public func run() async throws -> Report {
        var report = Report(chunkSize: options.chunkSize, congestionControl: options.congestionControl.rawValue,
                            regions: [], sizes: [], fanOut: [])
        for n in options.regionCounts {
            let c = try await regions(n)
            log(String(format: "%5d regions of %d KiB: synced in %.2f s (%.0f MB/s), lag p50 %.1f ms p99 %.1f ms, "
                       + "%.0f KiB anonymous per region following (%.0f at sync), %.2f s CPU, %d connection(s)%@",
                       n, c.bytesPerRegion >> 10, c.syncSeconds, c.aggregateMegabytesPerSecond, c.lagP50Milliseconds,
                       c.lagP99Milliseconds, c.anonymousBytesPerRegion / 1024, c.anonymousBytesPerRegionAtSync / 1024, c.cpuSeconds, c.connections,
                       c.exact ? "" : ", REPLICA DIFFERS"))
            report.regions.append(c)
        }
        if let many = report.regions.last, let sixteen = report.regions.first(where: { $0.regions == 16 }),
           many.regions > 16, sixteen.aggregateMegabytesPerSecond > 0 {
            report.manyRegionsThroughputRatio = many.aggregateMegabytesPerSecond / sixteen.aggregateMegabytesPerSecond
        }
        for size in options.sizes {
            let c = try await sized(size)
            log(String(format: "%6.2f GiB region (%.2f GiB data%@): synced in %.2f s (%.0f MB/s of data; the host made one copy's pages "
                       + "in %.2f s), 1 %% dirty scan %.2f ms, memory +%.3f %% of the region following (+%.3f %% at sync), "
                       + "%.2f s CPU per GiB%@",
                       Double(size) / Double(1 << 30), Double(c.dataBytes) / Double(1 << 30),
                       c.replicaOnDisk ? ", replica on disk" : "", c.syncSeconds,
                       c.dataMegabytesPerSecond, c.allocateSeconds, c.scanMilliseconds, c.anonymousOverheadPercent, c.anonymousAtSyncPercent, c.cpuSecondsPerGiB,
                       c.exact ? "" : ", REPLICA DIFFERS"))
            report.sizes.append(c)
        }
        for m in options.fanOut {
            let c = try await fanOut(m)
            log(String(format: "%3d mirrors of %d MiB: synced in %.2f s, primary sent %.2f× the region per mirror, "
                       + "%.2f s CPU per mirror%@", m, c.regionBytes >> 20, c.syncSeconds, c.sentPerMirrorPerRegionByte,
                       c.cpuSecondsPerMirror, c.exact ? "" : ", REPLICA DIFFERS"))
            report.fanOut.append(c)
        }
        return report
    }

    private var quic: QUICConfiguration {
        var q = QUICConfiguration()
        q.congestionControl = options.congestionControl
        return q
    }

    private var logger: Logger {
        var l = Logger(label: "memreplica.bench.scale")
        l.logLevel = .warning
        return l
    }

    /// A folder in /dev/shm for one case's replica files, or on disk
    /// (/var/tmp): a replica reserves its whole size (so that a full file
    /// system is an error, never a SIGBUS), and a 16 GiB one beside its
    /// primary does not fit in memory here.
    private func replicaFolder(_ label: String, onDisk: Bool = false) throws -> String {
        let path = (onDisk ? "/var/tmp" : "/dev/shm") + "/memreplica-bench-scale-\(getpid())-\(label)"
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Primary peer `a` exporting `regions`; one mirroring peer per entry
    /// of `mirrorSets`, each mirroring the names given into `folder`.
    private struct Peers {
        let a: PeerService
        let mirroring: [PeerService]
        let runners: [[MirrorRunner]]
        let tasks: [Task<Void, Never>]
        func close() async {
            // Mirrors first: they would retry a primary that went away.
            for b in mirroring { await b.endpoint.close() }
            await a.endpoint.close()
            for t in tasks { await t.value }
        }
    }

    private func start(_ regions: [Region], mirrorSets: [[String]], folder: String) throws -> Peers {
        let (endpointA, _) = try peers.peers(quic)
        let exports = RegionExports(regions.map { .init(region: $0) }, logger: logger)
        let a = PeerService(endpoint: endpointA, exports: exports, logger: logger)
        var services: [PeerService] = []
        var runners: [[MirrorRunner]] = []
        for (i, names) in mirrorSets.enumerated() {
            let endpointB = try peers.peers(quic).b
            let set = try names.map { name in
                MirrorRunner(spec: try MirrorSpec(name: name, address: PeerAddress(host: "127.0.0.1", port: endpointA.localAddress.port),
                                                  path: "\(folder)/\(i)-\(name)"),
                             endpoint: endpointB, logger: logger)
            }
            runners.append(set)
            services.append(PeerService(endpoint: endpointB, mirrors: set, logger: logger))
        }
        let tasks = ([a] + services).map { s in Task { await s.run() } }
        return Peers(a: a, mirroring: services, runners: runners, tasks: tasks)
    }

    private func waitSynced(_ runners: [MirrorRunner], limit: Duration = .seconds(120)) async throws {
        let deadline = ContinuousClock.now + limit
        var pending = runners
        while !pending.isEmpty {
            pending.removeAll { $0.synced }
            guard ContinuousClock.now < deadline else {
                let some = pending.prefix(3).map { r -> String in
                    var state = "\(r.spec.name): problem \(r.problem ?? "none")"
                    if case .eager(let m)? = r.mirror { state += ", \(m.currentProgress)" } else { state += ", no mirror" }
                    return state
                }
                throw BenchScaleError("\(pending.count) mirrors never synced: \(some.joined(separator: "; "))")
            }
            if !pending.isEmpty { try await Task.sleep(for: .milliseconds(2)) }
        }
    }

    /// The eager replica's mapping of a synced runner.
    private static func replica(_ runner: MirrorRunner) -> Region? {
        if case .eager(let m)? = runner.mirror { return m.region }
        return nil
    }

    /// Byte for byte, reading the primary's holes as zeros without
    /// allocating them (a sparse 16 GiB primary would not fit otherwise).
    private static func equal(_ a: Region, _ b: Region?) -> Bool {
        guard let b, a.bytes.count == b.bytes.count, a.geometry.chunkSize == b.geometry.chunkSize else { return false }
        var holes = HoleCursor(a)
        for chunk in 0..<a.geometry.chunkCount {
            guard let mine = try? holes.chunkBytes(chunk, of: a), let theirs = try? b.chunkBytes(chunk),
                  memcmp(mine.baseAddress!, theirs.baseAddress!, mine.count) == 0 else { return false }
        }
        return true
    }

    private func regions(_ n: Int) async throws -> RegionsCase {
        let folder = try replicaFolder("regions")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let regions = try (0..<n).map { i -> Region in
            let r = try Region(name: "r\(i)", backing: .memory, size: options.bytesPerRegion, chunkSize: options.chunkSize)
            fillPattern(r.bytes, seed: UInt64(1000 + i))
            return r
        }
        let anonBefore = ProcessMemory.settledAnonymousBytes()
        let cpuBefore = ProcessMemory.cpuSeconds()
        let began = ContinuousClock.now
        let p = try start(regions, mirrorSets: [regions.map(\.name)], folder: folder)
        try await waitSynced(p.runners[0])
        let syncSeconds = (ContinuousClock.now - began).seconds
        let cpu = ProcessMemory.cpuSeconds() - cpuBefore
        let anon = ProcessMemory.anonymousBytes() - anonBefore
        var exact = zip(regions, p.runners[0]).allSatisfy { Self.equal($0, Self.replica($1)) }
        // One write into every region at once; each lag is until its replica holds it.
        var lags: [Double] = []
        for round in 0..<3 {
            var waiting: [(primary: Region, replica: Region, offset: Int, value: UInt64)] = []
            let written = ContinuousClock.now
            for (r, runner) in zip(regions, p.runners[0]) {
                guard let replica = Self.replica(runner) else { exact = false; continue }
                let offset = Int.random(in: 0..<(r.bytes.count / 8)) * 8
                let value = UInt64.random(in: 1...UInt64.max) ^ UInt64(round)
                r.bytes.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
                waiting.append((r, replica, offset, value))
            }
            let deadline = ContinuousClock.now + .seconds(60)
            while !waiting.isEmpty && ContinuousClock.now < deadline {
                let now = ContinuousClock.now
                waiting.removeAll { w in
                    guard w.replica.bytes.load(fromByteOffset: w.offset, as: UInt64.self) == w.value else { return false }
                    lags.append((now - written).seconds * 1000)
                    return true
                }
                if !waiting.isEmpty { try await Task.sleep(for: .microseconds(500)) }
            }
            if !waiting.isEmpty { exact = false }
        }
        let connections = p.mirroring[0].primaryConnections.openCount
        let settled = try await ProcessMemory.followingAnonymousBytes() - anonBefore
        await p.close()
        lags.sort()
        func pct(_ q: Double) -> Double { lags.isEmpty ? 0 : lags[min(lags.count - 1, Int(Double(lags.count) * q))] }
        return RegionsCase(regions: n, bytesPerRegion: options.bytesPerRegion, syncSeconds: syncSeconds,
                           aggregateMegabytesPerSecond: Double(n * options.bytesPerRegion) / syncSeconds / 1e6,
                           lagP50Milliseconds: pct(0.5), lagP99Milliseconds: pct(0.99),
                           anonymousBytesPerRegion: Double(settled) / Double(n),
                           anonymousBytesPerRegionAtSync: Double(anon) / Double(n), cpuSeconds: cpu,
                           connections: connections, exact: exact)
    }

    private func sized(_ size: Int) async throws -> SizeCase {
        let folder = try replicaFolder("size", onDisk: size > options.denseLimit)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let region = try Region(name: "big", backing: .memory, size: size, chunkSize: options.chunkSize)
        let chunk = options.chunkSize
        let stride = size > options.denseLimit ? options.sparseStride : 1
        let allocating = ContinuousClock.now
        if stride == 1 {
            for start in Swift.stride(from: 0, to: size, by: 64 << 20) { region.populate(start..<min(size, start + (64 << 20))) }
        } else {
            for start in Swift.stride(from: 0, to: size, by: chunk * stride) { region.populate(start..<min(size, start + chunk)) }
        }
        let allocateSeconds = (ContinuousClock.now - allocating).seconds
        var data = 0
        for (i, start) in Swift.stride(from: 0, to: size, by: chunk * stride).enumerated() {
            let part = UnsafeMutableRawBufferPointer(rebasing: region.bytes[start..<min(size, start + chunk)])
            fillPattern(part, seed: UInt64(7 + i))
            data += part.count
        }
        let anonBefore = ProcessMemory.settledAnonymousBytes()
        let cpuBefore = ProcessMemory.cpuSeconds()
        let began = ContinuousClock.now
        let p = try start([region], mirrorSets: [["big"]], folder: folder)
        try await waitSynced(p.runners[0])
        let syncSeconds = (ContinuousClock.now - began).seconds
        let cpu = ProcessMemory.cpuSeconds() - cpuBefore
        let anon = ProcessMemory.anonymousBytes() - anonBefore
        // 1 % of the chunks written (one word each, in data chunks), then
        // the scan that found them, once the replica holds every write.
        let chunks = size / chunk
        let dirty = max(1, chunks / 100)
        let scansBefore = p.a.exports.dirtyTracking()["big"]?.statistics.scans ?? 0
        var writes: [(offset: Int, value: UInt64)] = []
        for c in (0..<(chunks / stride)).shuffled().prefix(dirty) {
            let offset = c * stride * chunk + Int.random(in: 0..<(chunk / 8)) * 8
            let value = UInt64.random(in: 1...UInt64.max)
            region.bytes.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
            writes.append((offset, value))
        }
        let replica = Self.replica(p.runners[0][0])
        let deadline = ContinuousClock.now + .seconds(120)
        // The longest scan since the writes that found any of them (each
        // scan's figures are read as it lands: one every tick).
        var scan = Duration.zero
        var seen = scansBefore
        func noteScan() {
            guard let s = p.a.exports.dirtyTracking()["big"]?.statistics, s.scans > seen else { return }
            seen = s.scans
            if s.lastChangedChunks > 0 { scan = max(scan, s.lastDuration) }
        }
        while let replica, ContinuousClock.now < deadline,
              writes.contains(where: { replica.bytes.load(fromByteOffset: $0.offset, as: UInt64.self) != $0.value }) {
            noteScan()
            try await Task.sleep(for: .milliseconds(1))
        }
        noteScan()
        let exact = Self.equal(region, replica)
        let settled = try await ProcessMemory.followingAnonymousBytes() - anonBefore
        await p.close()
        return SizeCase(regionBytes: size, replicaOnDisk: size > options.denseLimit, dataBytes: data, syncSeconds: syncSeconds,
                        allocateSeconds: allocateSeconds,
                        dataMegabytesPerSecond: Double(data) / syncSeconds / 1e6, dirtyChunks: dirty,
                        scanMilliseconds: scan.seconds * 1000,
                        anonymousOverheadPercent: Double(settled) / Double(size) * 100,
                        anonymousAtSyncPercent: Double(anon) / Double(size) * 100,
                        cpuSecondsPerGiB: cpu / (Double(size) / Double(1 << 30)), exact: exact)
    }

    private func fanOut(_ m: Int) async throws -> FanOutCase {
        let folder = try replicaFolder("fanout")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let region = try Region(name: "shared", backing: .memory, size: options.fanOutBytes, chunkSize: options.chunkSize)
        fillPattern(region.bytes, seed: 99)
        let cpuBefore = ProcessMemory.cpuSeconds()
        let began = ContinuousClock.now
        let p = try start([region], mirrorSets: Array(repeating: ["shared"], count: m), folder: folder)
        let all = p.runners.flatMap { $0 }
        try await waitSynced(all)
        let syncSeconds = (ContinuousClock.now - began).seconds
        let cpu = ProcessMemory.cpuSeconds() - cpuBefore
        let sent = p.a.exports.wireSavings()["shared"]?.wireBytes ?? 0
        let exact = all.allSatisfy { Self.equal(region, Self.replica($0)) }
        await p.close()
        return FanOutCase(mirrors: m, regionBytes: options.fanOutBytes, syncSeconds: syncSeconds,
                          sentPerMirrorPerRegionByte: Double(sent) / Double(m) / Double(options.fanOutBytes),
                          cpuSecondsPerMirror: cpu / Double(m), exact: exact)
    }
}

struct BenchScaleError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// This process's anonymous memory and CPU time, for per-unit costs.
enum ProcessMemory {
    /// RssAnon from /proc/self/status: heap and stacks, not the regions'
    /// shared mappings.
    static func anonymousBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("RssAnon:") {
            let kib = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
            return kib * 1024
        }
        return 0
    }

    /// RssAnon once the allocator has returned its free memory
    /// (`malloc_trim`): what the peers hold live, without the transfer
    /// buffers freed since and kept by glibc for reuse.
    static func settledAnonymousBytes() -> Int {
        malloc_trim(0)
        return anonymousBytes()
    }

    /// What peers that have synced hold while they follow: the least of
    /// five settled samples over a second, so ACKs and frames still in
    /// flight when the last write landed do not count.
    static func followingAnonymousBytes() async throws -> Int {
        var least = Int.max
        for i in 0..<5 {
            if i > 0 { try await Task.sleep(for: .milliseconds(200)) }
            least = min(least, settledAnonymousBytes())
        }
        return least
    }

    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return s(usage.ru_utime) + s(usage.ru_stime)
    }
}
