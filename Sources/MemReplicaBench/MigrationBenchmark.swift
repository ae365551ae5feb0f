import MemReplica
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import MemReplicaWAN
import Crypto
import Foundation
import Logging

/// `memreplica bench migrate`: hand-overs of a region between two peers in
/// this process while a writer stores into it (pre-copy, post-copy, hybrid),
/// on loopback and through the WAN emulator. Per cell: the downtime (from
/// the freeze of the writer until the destination owns the region and the
/// writer may store there), total time, bytes sent per region byte, chunks
/// re-sent; after post-copy the fill time and the latency of the faults
/// taken at the new owner (a reader touches random pages right after the
/// commit); and whether the destination's bytes equal the source's frozen
/// state (SHA-256 of both, every run).
public struct MigrationBenchmark: Sendable {
    public struct Options: Sendable {
        public var regionBytes = 1 << 30
        public var chunkSize = 65536
        public var writers: [Writer] = [.idle, .pages(bytesPerSecond: 10_000_000), .pages(bytesPerSecond: 100_000_000)]
        public var links: [Link] = [.loopback]
        public var modes: [MigrationMode] = MigrationMode.allCases
        /// `--when`: side by side for each mode. A cyclic writer runs
        /// `cyclicWarmUp` and a random part of its period before the
        /// migration is asked for (the history `quiet` looks for a cycle
        /// in), whichever the timing.
        public var timings: [MigrationRequest.Timing] = [.now]
        public var cyclicWarmUp: Duration = .seconds(8)
        public var runs = 3
        public var maxDowntimeMilliseconds = MigrationRequest.defaultMaxDowntimeMilliseconds
        public var timeoutSeconds = 60.0
        public var congestionControl: QUICConfiguration.CongestionControl = .bbr
        /// The emulated link's rate (bits per second).
        public var rateBitsPerSecond: UInt64 = 1_000_000_000
        /// When the copies are compared (`MigrationRequest.verify`).
        public var verify: MigrationRequest.Verification = .before
        public init() {}
    }

    /// Who writes to the region while it migrates.
    public enum Writer: Sendable, Equatable, CustomStringConvertible {
        case idle
        /// Random 4 KiB pages (one 8-byte store each) at this many page bytes per second.
        case pages(bytesPerSecond: Double)
        /// Bursts: `pages` at `bytesPerSecond` for `burstSeconds` of every
        /// `periodSeconds`, idle the rest (a garbage collector, a periodic flush).
        case cyclic(bytesPerSecond: Double, burstSeconds: Double, periodSeconds: Double)

        public var description: String {
            switch self {
            case .idle: "idle"
            case .pages(let rate): String(format: "%.0f MB/s pages", rate / 1e6)
            case .cyclic(let rate, let burst, let period):
                String(format: "bursts %.0f MB/s %.1f/%.0f s", rate / 1e6, burst, period)
            }
        }

        /// Page bytes per second at `seconds` into the run.
        func rate(at seconds: Double) -> Double {
            switch self {
            case .idle: 0
            case .pages(let rate): rate
            case .cyclic(let rate, let burst, let period):
                seconds.truncatingRemainder(dividingBy: period) < burst ? rate : 0
            }
        }
    }

    public struct Link: Sendable, Equatable, CustomStringConvertible {
        public var rttMilliseconds: Double
        public var lossPercent: Double
        /// Loopback: no emulator at all.
        public var emulated: Bool
        public static let loopback = Link(rttMilliseconds: 0, lossPercent: 0, emulated: false)
        public init(rttMilliseconds: Double, lossPercent: Double, emulated: Bool = true) {
            self.rttMilliseconds = rttMilliseconds
            self.lossPercent = lossPercent
            self.emulated = emulated
        }
        public var description: String {
            emulated ? String(format: "%.0f ms RTT, %.0f%% loss", rttMilliseconds, lossPercent) : "loopback"
        }
    }

    /// One migration: the source's report, and the benchmark's own check.
    public struct Run: Codable, Sendable {
        public var report: MigrationReport
        /// After post-copy: faults taken at the new owner during the fill,
        /// from the fault to its chunk's install (milliseconds).
        public var faults: Int?
        public var faultP50Milliseconds: Double?
        public var faultMaxMilliseconds: Double?
        /// The destination's region hashed (SHA-256) equal to the source's
        /// frozen region, and the protocol's check passed; nil if not handed over.
        public var lossless: Bool?
        public var handedOver: Bool { report.handedOver }
    }

    public struct Cell: Codable, Sendable {
        public var writer: String
        public var link: String
        public var rttMilliseconds: Double
        public var lossPercent: Double
        public var mode: String
        public var when: String
        public var runs: [Run]
        public var downtimeP50Milliseconds: Double?
        public var downtimeMaxMilliseconds: Double?
        public var totalSecondsP50: Double?
        public var bytesSentPerRegionByte: Double?
        public var chunksResentP50: UInt64?
        /// Runs handed over by post-copy (a hybrid run switched).
        public var postcopyRuns: Int
        public var fillSecondsP50: Double?
        public var faultP50Milliseconds: Double?
        public var faultMaxMilliseconds: Double?
        /// Every run handed over, and every one was lossless.
        public var allLossless: Bool
        /// The target: downtime ≤ 1 RTT + 20 ms (pre-copy, hybrid), 1 RTT + 5 ms (post-copy).
        public var downtimeTargetMilliseconds: Double
    }

    public struct Report: Codable, Sendable {
        public var regionBytes: Int
        public var chunkSize: Int
        public var congestionControl: String
        public var maxDowntimeMilliseconds: Double
        public var verify: String
        public var cells: [Cell]
    }

    public let options: Options
    let peers: BenchPeers
    let log: @Sendable (String) -> Void

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    public func run() async throws -> Report {
        var emulator: WANEmulator?
        defer { emulator?.shutdown() }
        if options.links.contains(where: \.emulated) {
            emulator = try WANEmulator(aToB: WANLinkProfile(), bToA: WANLinkProfile())
        }
        var cells: [Cell] = []
        for link in options.links {
            for writer in options.writers {
                for mode in options.modes {
                  for when in options.timings {
                    var runs: [Run] = []
                    for n in 1...options.runs {
                        log("migrate: \(link), writer \(writer), \(mode.rawValue), --when \(when.rawValue), run \(n) of \(options.runs)")
                        let run = try await once(link: link, writer: writer, mode: mode, when: when, emulator: emulator)
                        let r = run.report
                        log("  \(r.outcome)" + (r.handedOverAs.map { " by \($0.rawValue)" } ?? "")
                            + (r.downtimeMilliseconds.map { String(format: ", downtime %.1f ms", $0) } ?? "")
                            + String(format: ", %.2f s, %.2f× the region sent", r.totalSeconds,
                                     Double(r.bytesSent) / Double(options.regionBytes))
                            + (r.waitedSeconds.map { String(format: " (waited %.2f s for quiet", $0)
                                + (r.cycleSeconds.map { String(format: ", cycle %.1f s)", $0) } ?? ", no cycle)") } ?? "")
                            + (r.reason.map { ": \($0)" } ?? ""))
                        runs.append(run)
                    }
                    cells.append(cell(link: link, writer: writer, mode: mode, when: when, runs: runs))
                  }
                }
            }
        }
        return Report(regionBytes: options.regionBytes, chunkSize: options.chunkSize,
                      congestionControl: options.congestionControl.rawValue,
                      maxDowntimeMilliseconds: options.maxDowntimeMilliseconds, verify: options.verify.rawValue, cells: cells)
    }

    private func cell(link: Link, writer: Writer, mode: MigrationMode, when: MigrationRequest.Timing, runs: [Run]) -> Cell {
        func median<T: Comparable>(_ values: [T]) -> T? { values.isEmpty ? nil : values.sorted()[values.count / 2] }
        let done = runs.filter(\.handedOver)
        let downtimes = done.compactMap(\.report.downtimeMilliseconds)
        return Cell(writer: writer.description, link: link.description, rttMilliseconds: link.rttMilliseconds,
                    lossPercent: link.lossPercent, mode: mode.rawValue, when: when.rawValue, runs: runs,
                    downtimeP50Milliseconds: median(downtimes), downtimeMaxMilliseconds: downtimes.max(),
                    totalSecondsP50: median(done.map(\.report.totalSeconds)),
                    bytesSentPerRegionByte: median(done.map { Double($0.report.bytesSent) / Double(options.regionBytes) }),
                    chunksResentP50: median(done.map(\.report.chunksResent)),
                    postcopyRuns: done.filter { $0.report.handedOverAs == .postcopy }.count,
                    fillSecondsP50: median(done.compactMap(\.report.fillSeconds)),
                    faultP50Milliseconds: median(done.compactMap(\.faultP50Milliseconds)),
                    faultMaxMilliseconds: done.compactMap(\.faultMaxMilliseconds).max(),
                    allLossless: done.count == runs.count && done.allSatisfy { $0.lossless == true },
                    downtimeTargetMilliseconds: link.rttMilliseconds + (mode == .postcopy ? 5 : 20))
    }

    /// One migration from a fresh pair of peers: the destination mirrors the
    /// region first (over a lossless link), then the link takes its profile
    /// and the writer runs while the region is handed over.
    private func once(link: Link, writer: Writer, mode: MigrationMode, when: MigrationRequest.Timing,
                      emulator: WANEmulator?) async throws -> Run {
        var quic = QUICConfiguration()
        quic.congestionControl = options.congestionControl
        let endpoints: (a: QUICEndpoint, b: QUICEndpoint)
        if link.emulated, let emulator {
            emulator.setProfiles(aToB: WANLinkProfile(), bToA: WANLinkProfile())
            endpoints = try peers.peers(quic, a: (emulator.addressA, emulator.sideA), b: (emulator.addressB, emulator.sideB))
        } else {
            endpoints = try peers.peers(quic)
        }
        var logger = Logger(label: "memreplica.bench.migrate")
        logger.logLevel = .warning
        let region = try Region(name: "bench", backing: .memory, size: options.regionBytes, chunkSize: options.chunkSize)
        fillPattern(region.bytes, seed: 77)
        let a = PeerService(endpoint: endpoints.a, exports: RegionExports([.init(region: region)], logger: logger), logger: logger)
        let replicaPath = "/dev/shm/memreplica-bench-migrate-\(getpid())"
        unlink(replicaPath)
        defer { unlink(replicaPath) }
        let hostA = link.emulated ? emulator!.addressA : "127.0.0.1"
        let spec = try MirrorSpec(name: "bench", address: PeerAddress(host: hostA, port: endpoints.a.localAddress.port),
                                  path: replicaPath)
        let runner = MirrorRunner(spec: spec, endpoint: endpoints.b, logger: logger)
        let b = PeerService(endpoint: endpoints.b, exports: RegionExports([], logger: logger), mirrors: [runner], logger: logger)
        let serving = [Task { await a.run() }, Task { await b.run() }]
        defer {
            Task {
                await endpoints.a.close()
                await endpoints.b.close()
            }
        }
        let syncDeadline = ContinuousClock.now + .seconds(600)
        while !runner.synced {
            guard ContinuousClock.now < syncDeadline else { throw MigrationError("the destination's mirror never synced") }
            try await Task.sleep(for: .milliseconds(20))
        }
        if link.emulated, let emulator {
            let profile = WANLinkProfile.symmetric(rtt: .microseconds(Int64(link.rttMilliseconds * 1000)),
                                                   lossRate: link.lossPercent / 100,
                                                   rateBitsPerSecond: options.rateBitsPerSecond)
            emulator.setProfiles(aToB: profile.forward, bToA: profile.reverse)
        }
        let writing = PageWriter(region: region, writer: writer)
        if case .cyclic(_, _, let period) = writer {
            // Plus a random part of a period: `now` lands anywhere in the cycle.
            try await Task.sleep(for: options.cyclicWarmUp + .milliseconds(Int64.random(in: 0..<Int64(period * 1000))))
        } else {
            try await Task.sleep(for: .milliseconds(500))
        }
        // The writer stops for good at the hand-over (it would go on at the
        // destination): both copies stay as they were at the freeze, and
        // are compared once the migration returned (not inside its time).
        // After a post-copy commit a reader at the destination touches
        // random pages while the fill runs: its faults are the ones timed.
        let taken = Locked<PostCopyMirror?>(nil)
        let freeze = MigrationFreeze(pause: {
            await writing.pause()
        }, resume: { handedOver in
            writing.stop()
            guard handedOver, let mirror = b.postCopyTakeOver(named: "bench") else { return }
            taken.withLock { $0 = mirror }
            Self.touchPages(of: mirror)
        })
        let verify = mode == .postcopy ? .before : options.verify
        let report = try await a.migrate(.init(region: "bench", destination: "\(link.emulated ? emulator!.addressB : "127.0.0.1"):\(endpoints.b.localAddress.port)",
                                               mode: mode, maxDowntimeMilliseconds: options.maxDowntimeMilliseconds,
                                               timeoutSeconds: options.timeoutSeconds, then: .stop, verify: verify, when: when),
                                         freeze: freeze)
        writing.stop()
        var run = Run(report: report, lossless: nil)
        if report.handedOver, let destination = b.exports.export(named: "bench")?.region {
            let ours = Array(SHA256.hash(data: UnsafeRawBufferPointer(region.bytes)))
            let theirs = Array(SHA256.hash(data: UnsafeRawBufferPointer(destination.bytes)))
            // Post-copy checks each chunk as it is pulled, not the whole.
            run.lossless = ours == theirs && (report.verified == true || report.handedOverAs == .postcopy)
        }
        if let mirror = taken.withLock({ $0 }) {
            let latencies = mirror.takeFaultLatencies().map { $0.seconds * 1000 }.sorted()
            run.faults = latencies.count
            run.faultP50Milliseconds = latencies.isEmpty ? nil : latencies[latencies.count / 2]
            run.faultMaxMilliseconds = latencies.last
        }
        await endpoints.a.close()
        await endpoints.b.close()
        for task in serving { await task.value }
        return run
    }

    /// Reads one byte of 256 random pages of the new owner's copy, from a
    /// thread of its own (a missing chunk's first touch blocks it).
    private static let touched = Locked<UInt8>(0)

    private static func touchPages(of mirror: PostCopyMirror) {
        let region = mirror.region
        let thread = Thread {
            var rng = SystemRandomNumberGenerator()
            var sum: UInt8 = 0
            for _ in 0..<256 {
                let page = Int.random(in: 0..<(region.geometry.size / 4096), using: &rng)
                sum &+= region.bytes.load(fromByteOffset: page * 4096, as: UInt8.self)
            }
            // Used, so the loads are not optimized away.
            touched.withLock { $0 &+= sum }
        }
        thread.name = "bench post-copy reader"
        thread.start()
    }
}

/// A writer thread storing 8 bytes into random 4 KiB pages at a set rate.
final class PageWriter: Sendable {
    private struct State {
        var pauseRequested = false
        var paused = false
        var stopped = false
    }
    private let state = Locked(State())

    init(region: Region, writer: MigrationBenchmark.Writer) {
        guard writer != .idle else {
            state.withLock { $0.stopped = true }
            return
        }
        let state = self.state
        let pages = region.geometry.size / 4096
        let thread = Thread {
            var rng = SystemRandomNumberGenerator()
            let start = ContinuousClock.now
            var written = 0.0
            var due = 0.0
            var last = start
            while true {
                // The rate may change over time (bursts): integrate it.
                let now = ContinuousClock.now
                due += last.duration(to: now).seconds * writer.rate(at: start.duration(to: now).seconds) / 4096
                last = now
                let (pause, stop) = state.withLock { s -> (Bool, Bool) in
                    if s.pauseRequested { s.paused = true }
                    return (s.pauseRequested, s.stopped)
                }
                if stop { return }
                if !pause {
                    while written < due {
                        let page = Int.random(in: 0..<pages, using: &rng)
                        region.bytes.storeBytes(of: rng.next() as UInt64, toByteOffset: page * 4096, as: UInt64.self)
                        written += 1
                    }
                } else {
                    written = due
                }
                usleep(500)
            }
        }
        thread.name = "bench writer"
        thread.start()
    }

    /// Returns once the thread has stopped storing.
    func pause() async {
        let already = state.withLock { s -> Bool in
            s.pauseRequested = true
            return s.stopped
        }
        if already { return }
        while !state.withLock({ $0.paused || $0.stopped }) { try? await Task.sleep(for: .microseconds(100)) }
    }

    func stop() { state.withLock { $0.stopped = true } }
}
