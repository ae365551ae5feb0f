import MemReplica
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import MemReplicaWAN
import Foundation
import Logging

/// `memreplica bench wan`: QUIC against TLS over one TCP connection and TLS
/// over one TCP connection per region, across the WAN emulator, one
/// scenario after another, every transport in every run side by side.
///
/// Each run of each transport, with fresh replicas:
/// 1. connect (timed): the primary listens in namespace A, the replica
///    connects from namespace B, across the emulated path;
/// 2. bulk sync of `scenario.regions` regions (throughput), and meanwhile
///    `readers` streams each READ one random 4 KiB chunk of another region
///    at a time (latency): the head-of-line case, as a lazy replica's
///    faults meet a migration's bulk push;
/// 3. the connection closes; reconnect (timed, resumed by both transports);
///    writes into a small tracked region, each timed until the replica's
///    mapping holds it (lag: one way plus the dirty scan).
/// Every region that finished syncing is compared with its primary.
public struct WANBenchmark {
    public struct Options: Sendable {
        public var rttsMilliseconds: [Double] = [0.2, 10, 50, 150]
        public var lossPercents: [Double] = [0, 0.5, 1, 2]
        public var regionCounts: [Int] = [1, 4, 16]
        public var transports: [TransportKind] = TransportKind.allCases
        public var congestionControls: [QUICConfiguration.CongestionControl] = [.bbr]
        /// What the bulk regions hold, each a set of scenarios of its own.
        public var contents: [BenchContent] = [.random]
        /// Wire formats the replica offers, each a set of scenarios of its own.
        public var wireModes: [WANWireMode] = [.pages]
        /// Lanes per bulk region's pass; nil: each transport's default.
        public var laneCounts: [Int?] = [nil]
        public var runs = 3
        /// Bulk bytes in all, split over the scenario's regions.
        public var bulkBytes = 64 << 20
        public var bulkChunkBytes = 64 << 10
        /// A bulk sync still running by then is stopped and its bytes so far count.
        public var bulkTimeLimit: Duration = .seconds(4)
        public var readChunkBytes = 4096
        public var readRegionBytes = 16 << 20
        /// Streams reading at once, one READ outstanding on each.
        public var readers = 8
        public var lagRegionBytes = 256 << 10
        public var lagWrites = 15
        public var lagWritesPerSecond = 25
        /// A region this large is synced, then rewritten at once and timed
        /// until the replica equals it (0: no burst phase).
        public var burstBytes = 0
        public var scanInterval: Duration = .milliseconds(2)
        /// The emulated link's rate (each direction); nil: as fast as the forwarder goes.
        public var rateBitsPerSecond: UInt64? = 1_000_000_000
        public var queueLimitBytes = 4 << 20
        /// The QUIC primary's `bulkQueueAllowance` (nil: no gate).
        public var bulkQueueAllowance: Duration? = QUICConfiguration().bulkQueueAllowance
        public var calibrationProbes = 400
        public var quick = false

        public init() {}

        /// One small scenario end to end, for CI: that numbers come out and
        /// are sane, not how fast.
        public static var quick: Options {
            var o = Options()
            o.rttsMilliseconds = [50]
            o.lossPercents = [1]
            o.regionCounts = [4]
            o.runs = 1
            o.bulkBytes = 16 << 20
            o.bulkTimeLimit = .seconds(3)
            o.lagWrites = 10
            o.calibrationProbes = 200
            o.quick = true
            return o
        }

        public var scenarios: [WANScenario] {
            congestionControls.flatMap { cc in
                contents.flatMap { content in
                    wireModes.flatMap { wire in
                        laneCounts.flatMap { lanes in
                            rttsMilliseconds.flatMap { rtt in
                                lossPercents.flatMap { loss in
                                    regionCounts.map {
                                        WANScenario(rttMilliseconds: rtt, lossPercent: loss, regions: $0, congestionControl: cc.rawValue,
                                                    content: content.rawValue, wire: wire.rawValue, lanes: lanes)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    public let options: Options
    let peers: BenchPeers
    let log: @Sendable (String) -> Void
    let workDirectory: String
    private let images = Locked<[String: [UInt8]]>([:])

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        self.workDirectory = workDirectory
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    public func run() async throws -> WANBenchmarkReport {
        let started = Date()
        let clockStart = ContinuousClock.now
        let scenarios = options.scenarios
        let first = scenarios.first.map { $0.linkProfiles(rateBitsPerSecond: options.rateBitsPerSecond, queueLimitBytes: options.queueLimitBytes) }
        let emulator = try WANEmulator(aToB: first?.aToB ?? WANLinkProfile(), bToA: first?.bToA ?? WANLinkProfile(),
                                       tcpCongestionControl: scenarios.first.flatMap { QUICConfiguration.CongestionControl(rawValue: $0.congestionControl) }?.kernelName ?? "bbr")
        defer { emulator.shutdown() }
        log("emulator up: primary \(emulator.addressA) in \(emulator.sideA.name), replica \(emulator.addressB) in \(emulator.sideB.name)")

        var calibrations: [WANCalibrationReport] = []
        let total = scenarios.count * options.runs * options.transports.count
        var results: [WANRunResult] = []
        var failures: [WANRunFailure] = []
        for scenario in scenarios {
            let link = scenario.linkProfiles(rateBitsPerSecond: options.rateBitsPerSecond, queueLimitBytes: options.queueLimitBytes)
            emulator.setProfiles(aToB: link.aToB, bToA: link.bToA)
            // Each link the matrix uses is checked against its profile once,
            // before its first run (the forwarder's capacity only the first time).
            if options.calibrationProbes > 0, !calibrations.contains(where: { $0.configuredLossAToB == link.aToB.lossRate
                                                                          && $0.configuredRTT == link.aToB.delay + link.bToA.delay }) {
                let report = try WANCalibration.run(emulator, probes: options.calibrationProbes,
                                                    measureCapacity: calibrations.isEmpty)
                log("calibration, \(scenario.description):\n" + report.description)
                calibrations.append(report)
            }
            let primaries = try makePrimaries(scenario)
            try await measureRuns(of: scenario, total: total, since: clockStart, results: &results, failures: &failures) { kind, run in
                try await measure(kind, scenario: scenario, run: run, primaries: primaries, emulator: emulator)
            }
        }
        let (summaries, ratios, targets) = WANBenchmarkReport.summarize(results)
        let formatter = ISO8601DateFormatter()
        return WANBenchmarkReport(
            startedAt: formatter.string(from: started), seconds: (ContinuousClock.now - clockStart).seconds,
            quick: options.quick,
            settings: .init(runs: options.runs, bulkBytes: options.bulkBytes, bulkChunkBytes: options.bulkChunkBytes,
                            bulkTimeLimitSeconds: options.bulkTimeLimit.seconds, readChunkBytes: options.readChunkBytes,
                            readers: options.readers, lagWrites: options.lagWrites,
                            lagWritesPerSecond: options.lagWritesPerSecond,
                            scanIntervalMilliseconds: options.scanInterval.milliseconds,
                            rateBitsPerSecond: options.rateBitsPerSecond, queueLimitBytes: options.queueLimitBytes,
                            lossAppliedTo: "each direction independently",
                            bulkQueueAllowanceMilliseconds: options.bulkQueueAllowance?.milliseconds ?? -1),
            calibrations: calibrations, results: results, failures: failures.isEmpty ? nil : failures,
            summaries: summaries, ratios: ratios, targets: targets)
    }

    /// The scenario's primaries: bulk regions, the read region and the lag
    /// region, filled with random bytes (shared by every run and transport).
    private struct Primaries {
        var bulk: [Region]
        var read: Region
        var lag: Region
        var burst: Region?
        var all: [Region] { bulk + [read, lag] + (burst.map { [$0] } ?? []) }
    }

    /// The bulk regions' image of `content`, made once per run and size.
    /// Every run of one scenario, each transport in turn. A run whose
    /// connection ended (a `TransportError`) is a failure of that run: it
    /// is logged and listed, and the matrix goes on. Any other error (bytes
    /// that arrived wrong) ends the benchmark.
    func measureRuns(of scenario: WANScenario, total: Int, since clockStart: ContinuousClock.Instant,
                     results: inout [WANRunResult], failures: inout [WANRunFailure],
                     measure: (TransportKind, Int) async throws -> WANRunResult) async throws {
        for run in 1...options.runs {
            // Transports alternate their order between runs, so neither
            // always meets a machine the other just warmed or loaded.
            let kinds = run % 2 == 1 ? options.transports : options.transports.reversed()
            for kind in kinds {
                let result: WANRunResult
                do {
                    result = try await measure(kind, run)
                } catch let error as TransportError {
                    // Bytes that arrived wrong still end the benchmark.
                    failures.append(WANRunFailure(scenario: scenario, transport: kind.rawValue, run: run,
                                                  error: error.description))
                    log("[\(results.count + failures.count)/\(total)] \(scenario.description), \(kind.rawValue) run \(run): "
                        + "FAILED, the connection ended: \(error)")
                    continue
                }
                results.append(result)
                let elapsed = (ContinuousClock.now - clockStart).seconds
                let done = results.count + failures.count
                let eta = elapsed / Double(done) * Double(total - done)
                let queued = [result.bulkQueueWaitMilliseconds, result.readQueueWaitMilliseconds]
                    .map { $0.map { String(format: "%.1f", $0) } ?? "–" }.joined(separator: "/")
                log(String(format: "[%d/%d] %@, %@ run %d: read p50 %.1f p99 %.1f ms (%d; queue wait %@ ms), %.3g Mbit/s%@, connect %.1f ms, lag p50 %@ (%.0f s left)",
                           done, total, scenario.description, kind.rawValue, run,
                           result.readP50Milliseconds, result.readP99Milliseconds, result.readSamples, queued,
                           result.throughputMbps, result.bulkCompleted ? "" : " (time limit)",
                           result.connectMilliseconds,
                           result.lagP50Milliseconds.map { String(format: "%.1f ms", $0) } ?? "n/a", eta)
                    + (result.burstMbps.map { String(format: ", burst %.0f Mbit/s", $0) } ?? "")
                    + (result.wireBytesPerRegionByte.map { String(format: ", wire %.3f per region byte", $0) } ?? "")
                    + (result.compressionRatio.map {
                        String(format: " (%.0f %% compressed, to %.3f)", 100 * (result.compressedShare ?? 0), $0)
                    } ?? ""))
            }
        }
    }

    private func contentImage(_ content: BenchContent, bytes: Int) throws -> [UInt8] {
        let key = "\(content.rawValue)-\(bytes)"
        if let image = images.withLock({ $0[key] }) { return image }
        var image = [UInt8](repeating: 0, count: bytes)
        let repeated = try image.withUnsafeMutableBytes { try content.fill($0, workDirectory: workDirectory) }
        log("content \(content.rawValue): \(bytes >> 20) MiB from a \(repeated >> 20) MiB image")
        images.withLock { $0[key] = image }
        return image
    }

    private func makePrimaries(_ scenario: WANScenario) throws -> Primaries {
        let chunk = options.bulkChunkBytes
        let perRegion = max(chunk, (options.bulkBytes / scenario.regions) / chunk * chunk)
        let content = BenchContent(rawValue: scenario.content) ?? .random
        let bulk = try (0..<scenario.regions).map { i in
            let r = try Region(name: "bulk-\(i)", backing: .memory, size: perRegion, chunkSize: chunk)
            if content == .random {
                fillPattern(r.bytes, seed: UInt64(100 + i))
            } else {
                // Each region a different part of the image.
                let image = try contentImage(content, bytes: perRegion * scenario.regions)
                image.withUnsafeBytes { source in
                    let start = (i * perRegion) % max(1, source.count - perRegion + 1)
                    r.bytes.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[start..<start + perRegion]))
                }
            }
            return r
        }
        let read = try Region(name: "read", backing: .memory, size: options.readRegionBytes, chunkSize: options.readChunkBytes)
        fillPattern(read.bytes, seed: 7)
        let lag = try Region(name: "lag", backing: .memory, size: options.lagRegionBytes, chunkSize: options.readChunkBytes)
        fillPattern(lag.bytes, seed: 9)
        var burst: Region?
        if options.burstBytes > 0 {
            let size = max(chunk, options.burstBytes / chunk * chunk)
            burst = try Region(name: "burst", backing: .memory, size: size, chunkSize: chunk)
            fillPattern(burst!.bytes, seed: 11)
        }
        return Primaries(bulk: bulk, read: read, lag: lag, burst: burst)
    }

    private func quietLogger() -> Logger {
        var l = Logger(label: "memreplica.bench")
        l.logLevel = .critical
        return l
    }

    private func measure(_ kind: TransportKind, scenario: WANScenario, run: Int, primaries: Primaries,
                         emulator: WANEmulator) async throws -> WANRunResult {
        var quic = QUICConfiguration()
        quic.congestionControl = QUICConfiguration.CongestionControl(rawValue: scenario.congestionControl) ?? .bbr
        // A dead path should fail a run in seconds, not hang it.
        quic.handshakeTimeout = .seconds(20)
        quic.livenessTimeout = .seconds(20)
        quic.bulkQueueAllowance = options.bulkQueueAllowance
        let (server, client) = try peers.transports(kind, quic, server: (emulator.addressA, emulator.sideA),
                                                    client: (emulator.addressB, emulator.sideB))
        let exports = RegionExports(primaries.all.map { RegionExports.Export(region: $0) }, scanInterval: options.scanInterval,
                                    lanes: scenario.lanes.map { LanePolicy(count: $0) } ?? .standard(for: kind), logger: quietLogger())
        let offered = (WANWireMode(rawValue: scenario.wire) ?? .pages).offered
        let serving = Task { await Self.serve(exports, on: server, offered: offered) }
        let before = emulator.statistics()
        defer { serving.cancel() }
        do {
            let address = try PeerAddress(host: emulator.addressA, port: server.localAddress.port)
            let bulkBefore = emulator.statistics()
            var result = try await bulkAndReads(kind, scenario: scenario, run: run, client: client, address: address, primaries: primaries)
            let bulkPhase = emulator.statistics().since(bulkBefore)
            result.bulkQueueWaitMilliseconds = bulkPhase.aToB.meanQueueWaitMilliseconds
            result.readQueueWaitMilliseconds = bulkPhase.bToA.meanQueueWaitMilliseconds
            let savings = exports.wireSavings()
            var bulk = WireSavings()
            for region in primaries.bulk { if let s = savings[region.name] { bulk.add(s) } }
            result.bulkWireBytes = bulk.wireBytes
            // Per byte sent, not synced: at the time limit the send buffers
            // still hold frames the replica has yet to apply.
            result.wireBytesPerRegionByte = bulk.bytesDirtied > 0 ? bulk.wireRatio : nil
            result.compressionRatio = bulk.compressionInputBytes > 0 ? bulk.compressionRatio : nil
            result.compressedShare = bulk.bytesDirtied > 0
                ? Double(bulk.compressionInputBytes) / Double(bulk.bytesDirtied) : nil
            try await reconnectAndLag(&result, client: client, address: address, primaries: primaries)
            let during = emulator.statistics().since(before)
            let directions = [during.aToB, during.bToA]
            result.packetsPassed = directions.map(\.packetsPassed).reduce(0, +)
            result.packetsDroppedByLoss = directions.map(\.droppedByLoss).reduce(0, +)
            result.packetsDroppedByQueue = directions.map { $0.droppedByQueue + $0.droppedByCapacity }.reduce(0, +)
            result.kernelTxDropped = directions.map { $0.kernelTxDropped ?? 0 }.reduce(0, +)
            await client.close()
            await server.close()
            return result
        } catch {
            await client.close()
            await server.close()
            throw error
        }
    }

    /// Accepts connections and serves each stream (SUBSCRIBE of any mode).
    private static func serve(_ exports: RegionExports, on server: any Transport, offered: WireCapabilities) async {
        await withDiscardingTaskGroup { group in
            while let connection = await server.accept() {
                group.addTask {
                    await withDiscardingTaskGroup { streams in
                        while let stream = try? await connection.acceptStream() {
                            streams.addTask { await exports.serve(stream, peer: connection.peerIdentity, offered: offered) }
                        }
                    }
                }
            }
        }
    }

    private func bulkAndReads(_ kind: TransportKind, scenario: WANScenario, run: Int, client: any Transport,
                              address: PeerAddress, primaries: Primaries) async throws -> WANRunResult {
        let connectStart = ContinuousClock.now
        let connection = try await client.connect(to: address)
        let connectTime = ContinuousClock.now - connectStart

        let replicas = try primaries.bulk.map {
            try Region(name: $0.name, backing: .memory, size: $0.geometry.size, chunkSize: $0.geometry.chunkSize)
        }
        let mirrors = replicas.map { RegionMirror(region: $0, offersHeldChunks: false) }
        let failure = Locked<(any Error)?>(nil)
        let bulkStart = ContinuousClock.now
        let syncing = mirrors.map { mirror in
            Task {
                do { try await mirror.run(over: connection) } catch {
                    if !Task.isCancelled { failure.withLock { $0 = $0 ?? error } }
                }
            }
        }
        let bulkDone = Locked(false)
        let readers = options.readers
        let read = primaries.read
        let reading = Task { try await Self.readChunks(of: read, over: connection, readers: readers, until: bulkDone) }

        let deadline = bulkStart + options.bulkTimeLimit
        var completed = false
        while ContinuousClock.now < deadline {
            if let error = failure.withLock({ $0 }) { throw error }
            if mirrors.allSatisfy(\.initialSyncComplete) { completed = true; break }
            try await Task.sleep(for: .milliseconds(2))
        }
        let bulkSeconds = (ContinuousClock.now - bulkStart).seconds
        bulkDone.withLock { $0 = true }
        let chunk = options.bulkChunkBytes
        let synced = mirrors.map { $0.currentProgress.chunksPresent * chunk }.reduce(0, +)
        let samples: [Double]
        do {
            samples = try await reading.value.sorted()
        } catch {
            syncing.forEach { $0.cancel() }
            throw error
        }
        syncing.forEach { $0.cancel() }
        // The end-to-end check: every replica that finished holds its primary's bytes.
        for (replica, mirror) in zip(replicas, mirrors) where mirror.initialSyncComplete {
            guard let primary = primaries.bulk.first(where: { $0.name == replica.name }),
                  memcmp(primary.bytes.baseAddress!, replica.bytes.baseAddress!, replica.geometry.size) == 0 else {
                throw WANBenchmarkError.replicaDiffers(region: replica.name, transport: kind.rawValue)
            }
        }
        await connection.close(errorCode: 0, reason: "bench phase done")
        let total = primaries.bulk.map(\.geometry.size).reduce(0, +)
        return WANRunResult(
            scenario: scenario, transport: kind.rawValue, run: run,
            connectMilliseconds: connectTime.milliseconds, reconnectMilliseconds: 0,
            readSamples: samples.count,
            readP50Milliseconds: percentile(samples, 0.5) * 1000, readP99Milliseconds: percentile(samples, 0.99) * 1000,
            readP999Milliseconds: percentile(samples, 0.999) * 1000, readMaxMilliseconds: (samples.last ?? 0) * 1000,
            bulkBytesSynced: completed ? total : synced, bulkBytesTotal: total, bulkSeconds: bulkSeconds,
            bulkCompleted: completed, throughputMbps: Double(completed ? total : synced) * 8 / bulkSeconds / 1e6,
            lagSamples: 0, lagP50Milliseconds: nil, lagP99Milliseconds: nil,
            packetsPassed: 0, packetsDroppedByLoss: 0, packetsDroppedByQueue: 0, kernelTxDropped: 0)
    }

    /// `readers` streams, each with one READ of a random chunk outstanding,
    /// until `done`; seconds per READ. Every chunk read is checked against
    /// the primary.
    private static func readChunks(of primary: Region, over connection: any TransportConnection, readers: Int,
                                   until done: Locked<Bool>) async throws -> [Double] {
        let g = primary.geometry
        return try await withThrowingTaskGroup(of: [Double].self) { group in
            for _ in 0..<readers {
                group.addTask {
                    let frames = FrameStream(try await connection.openStream())
                    await frames.stream.prioritize()
                    try await frames.send(.subscribe(.init(name: primary.name, size: UInt64(g.size),
                                                           chunkSize: UInt64(g.chunkSize), mode: .reads)))
                    var samples: [Double] = []
                    var rng = SystemRandomNumberGenerator()
                    while !done.withLock({ $0 }) {
                        let chunk = Int.random(in: 0..<g.chunkCount, using: &rng)
                        let start = ContinuousClock.now
                        try await frames.send(.read(firstChunk: UInt64(chunk), count: 1))
                        guard let frame = try await frames.receive() else { throw WANBenchmarkError.readStreamEnded }
                        let elapsed = ContinuousClock.now - start
                        guard case .data(let first, let bytes) = frame, first == UInt64(chunk),
                              bytes.count == g.chunkSize,
                              bytes.withUnsafeBytes({ memcmp($0.baseAddress!, primary.bytes.baseAddress! + chunk * g.chunkSize, g.chunkSize) }) == 0
                        else { throw WANBenchmarkError.wrongChunk(chunk) }
                        samples.append(elapsed.seconds)
                    }
                    await frames.stream.reset(errorCode: ProtocolErrorCode.noError.rawValue)
                    return samples
                }
            }
            var all: [Double] = []
            for try await part in group { all += part }
            return all
        }
    }

    /// A new connection (timed: the reconnect), then the lag measurement on
    /// it; the connection is closed either way.
    private func reconnectAndLag(_ result: inout WANRunResult, client: any Transport, address: PeerAddress,
                                 primaries: Primaries) async throws {
        let start = ContinuousClock.now
        let connection = try await client.connect(to: address)
        result.reconnectMilliseconds = (ContinuousClock.now - start).milliseconds
        do {
            try await measureLag(&result, over: connection, primaries: primaries)
            if let burst = primaries.burst { try await measureBurst(&result, over: connection, primary: burst) }
        } catch {
            await connection.close(errorCode: 0, reason: "bench run failed")
            throw error
        }
        await connection.close(errorCode: 0, reason: "bench run done")
    }

    /// Writes into the lag region, each timed until the replica's mapping
    /// holds it; at the end the replica must equal the primary. Leaves the
    /// lag unset if the region's initial sync does not finish in 30 s.
    private func measureLag(_ result: inout WANRunResult, over connection: any TransportConnection,
                            primaries: Primaries) async throws {
        let primary = primaries.lag
        // Bounded: over the longest, lossiest links a single TCP connection
        // is too slow to finish in any useful time (figure in
        // bench/RESULTS.md, "Figures behind design choices").
        guard let (replica, following) = try await syncedReplica(of: primary, over: connection, within: .seconds(30),
                                                                 polling: .milliseconds(2)) else { return }
        defer { following.cancel() }
        var lags: [Double] = []
        var rng = SystemRandomNumberGenerator()
        let period = Duration.seconds(1) / options.lagWritesPerSecond
        let words = primary.geometry.size / 8
        for n in 1...options.lagWrites {
            let offset = Int.random(in: 0..<words, using: &rng) * 8
            let marker = UInt64(n) << 32 | UInt64.random(in: 1..<UInt64(UInt32.max), using: &rng)
            let written = ContinuousClock.now
            primary.bytes.storeBytes(of: marker, toByteOffset: offset, as: UInt64.self)
            // Both ends live in this process, on one clock: the write is
            // replicated once the replica's mapping holds it.
            let deadline = written + .seconds(20)
            while replica.bytes.load(fromByteOffset: offset, as: UInt64.self) != marker {
                guard ContinuousClock.now < deadline else { throw WANBenchmarkError.writeNotReplicated(n) }
                try await Task.sleep(for: .microseconds(100))
            }
            lags.append((ContinuousClock.now - written).seconds)
            let next = written + period
            if ContinuousClock.now < next { try await Task.sleep(until: next) }
        }
        guard memcmp(primary.bytes.baseAddress!, replica.bytes.baseAddress!, primary.geometry.size) == 0 else {
            throw WANBenchmarkError.replicaDiffers(region: primary.name, transport: result.transport)
        }
        lags.sort()
        result.lagSamples = lags.count
        result.lagP50Milliseconds = percentile(lags, 0.5) * 1000
        result.lagP99Milliseconds = percentile(lags, 0.99) * 1000
    }
}

extension WANBenchmark {
    /// Syncs the burst region, then rewrites all of it at once and times
    /// until the replica equals it: how fast a burst of writes on a synced
    /// region gets across (later passes). Leaves the result unset if the
    /// initial sync does not finish in 60 s.
    func measureBurst(_ result: inout WANRunResult, over connection: any TransportConnection, primary: Region) async throws {
        let size = primary.geometry.size
        guard let (replica, following) = try await syncedReplica(of: primary, over: connection, within: .seconds(60),
                                                                 polling: .milliseconds(5)) else { return }
        defer { following.cancel() }
        // New bytes made aside, so the rewrite itself takes a memcpy's time.
        let fresh = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { fresh.deallocate() }
        fillPattern(fresh, seed: UInt64.random(in: 1000...UInt64.max))
        let began = ContinuousClock.now
        primary.bytes.copyMemory(from: UnsafeRawBufferPointer(fresh))
        let deadline = began + .seconds(120)
        while memcmp(primary.bytes.baseAddress!, replica.bytes.baseAddress!, size) != 0 {
            guard ContinuousClock.now < deadline else { throw WANBenchmarkError.burstNotReplicated(bytes: size) }
            try await Task.sleep(for: .milliseconds(20))
        }
        let seconds = (ContinuousClock.now - began).seconds
        result.burstMilliseconds = seconds * 1000
        result.burstMbps = Double(size) * 8 / seconds / 1e6
    }
}

extension WANBenchmark {
    /// A new in-memory replica following `primary` over `connection`, once
    /// its initial sync completed; nil, and nothing left running, if that
    /// took longer than `limit`. The caller cancels the task it returns.
    func syncedReplica(of primary: Region, over connection: any TransportConnection, within limit: Duration,
                       polling interval: Duration) async throws -> (Region, Task<Void, any Error>)? {
        let replica = try Region(name: primary.name, backing: .memory, size: primary.geometry.size,
                                 chunkSize: primary.geometry.chunkSize)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let following = Task { try await mirror.run(over: connection) }
        let deadline = ContinuousClock.now + limit
        while !mirror.initialSyncComplete {
            guard ContinuousClock.now < deadline else {
                following.cancel()
                return nil
            }
            do { try await Task.sleep(for: interval) } catch {
                following.cancel()
                throw error
            }
        }
        return (replica, following)
    }
}

public enum WANBenchmarkError: Error, CustomStringConvertible {
    case replicaDiffers(region: String, transport: String)
    case burstNotReplicated(bytes: Int)
    case readStreamEnded
    case wrongChunk(Int)
    case writeNotReplicated(Int)

    public var description: String {
        switch self {
        case .replicaDiffers(let region, let transport): "region \(region) differs from its primary after a sync over \(transport)"
        case .readStreamEnded: "a reads stream ended before its DATA came"
        case .wrongChunk(let chunk): "READ of chunk \(chunk) was answered with other bytes"
        case .writeNotReplicated(let n): "write \(n) into the lag region did not reach the replica in 20 s"
        case .burstNotReplicated(let bytes): "a \(bytes >> 20) MiB rewrite of the burst region did not reach the replica in 120 s"
        }
    }
}
