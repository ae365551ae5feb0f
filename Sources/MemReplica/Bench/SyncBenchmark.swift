import Foundation
import Logging

/// `memreplica bench sync`: replication over QUIC on loopback.
/// - Initial sync: a mirror of a region of random bytes, from SUBSCRIBE to
///   SYNCED, in MB/s (median of runs).
/// - Lag: single-word writes into the live primary at a fixed rate; lag is
///   the time from the write until the primary receives the replica's ACK
///   of a version carrying it (then the bench checks the replica's mapping
///   holds the bytes). It includes the dirty tracker's interval.
public struct SyncBenchmark {
    public struct Options: Sendable {
        public var syncBytes = 1 << 30
        public var chunkSize = ExportSpec.defaultChunkSize
        public var runs = 3
        public var lagRegionBytes = 64 << 20
        public var lagWrites = 500
        public var writesPerSecond = 200
        public var scanInterval: Duration = .milliseconds(2)
        public init() {}
    }

    public struct Report: Codable, Sendable {
        public var syncBytes: Int
        public var chunkSize: Int
        public var syncRunsMBps: [Double]
        public var syncMedianMBps: Double
        public var lagRegionBytes: Int
        public var scanIntervalMilliseconds: Double
        public var writesPerSecond: Int
        public var lagSamples: Int
        public var lagP50Milliseconds: Double
        public var lagP99Milliseconds: Double
        public var lagMaxMilliseconds: Double
    }

    public let options: Options
    let peers: BenchPeers
    let log: @Sendable (String) -> Void

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    private func quietLogger() -> Logger {
        var l = Logger(label: "memreplica.bench")
        l.logLevel = .warning
        return l
    }

    public func run() async throws -> Report {
        let primary = try Region(name: "sync", backing: .memory, size: options.syncBytes, chunkSize: options.chunkSize)
        fillPattern(primary.bytes, seed: 1)
        var runs: [Double] = []
        for run in 1...options.runs {
            let exports = RegionExports([.init(region: primary)], scanInterval: .seconds(3600), logger: quietLogger())
            let (server, client, conn, serving) = try await peers.connectServing(exports)
            let replica = try Region(name: "sync", backing: .memory, size: options.syncBytes, chunkSize: options.chunkSize)
            let mirror = RegionMirror(region: replica, offersHeldChunks: false)
            let start = ContinuousClock.now
            let task = Task { try await mirror.run(over: conn) }
            while !mirror.initialSyncComplete { try await Task.sleep(for: .microseconds(200)) }
            let seconds = (ContinuousClock.now - start).seconds
            task.cancel()
            serving.cancel()
            await client.close()
            await server.close()
            guard memcmp(replica.bytes.baseAddress!, primary.bytes.baseAddress!, options.syncBytes) == 0 else {
                throw ReplicationError.violation(ProtocolViolation(.internalError, "replica differs after the initial sync"))
            }
            let mbps = Double(options.syncBytes) / seconds / 1e6
            runs.append(mbps)
            log("initial sync run \(run): \(String(format: "%.1f", mbps)) MB/s (\(options.syncBytes >> 20) MiB, verified equal)")
        }
        let lags = try await measureLag()
        let sorted = lags.sorted()
        func pct(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1000 }
        return Report(syncBytes: options.syncBytes, chunkSize: options.chunkSize, syncRunsMBps: runs,
                      syncMedianMBps: median(runs), lagRegionBytes: options.lagRegionBytes,
                      scanIntervalMilliseconds: options.scanInterval.milliseconds, writesPerSecond: options.writesPerSecond,
                      lagSamples: sorted.count, lagP50Milliseconds: pct(0.5), lagP99Milliseconds: pct(0.99),
                      lagMaxMilliseconds: (sorted.last ?? 0) * 1000)
    }

    /// Seconds from each write in the primary until the primary holds the
    /// replica's ACK of a version that carries it.
    private func measureLag() async throws -> [Double] {
        let primary = try Region(name: "lag", backing: .memory, size: options.lagRegionBytes, chunkSize: options.chunkSize)
        let probe = LagProbe(region: "lag")
        let exports = RegionExports([.init(region: primary)], scanInterval: options.scanInterval, observer: probe,
                                    logger: quietLogger())
        let (server, client, conn, serving) = try await peers.connectServing(exports)
        let replica = try Region(name: "lag", backing: .memory, size: options.lagRegionBytes, chunkSize: options.chunkSize)
        let mirror = RegionMirror(region: replica)
        let task = Task { try await mirror.run(over: conn) }
        defer { task.cancel(); serving.cancel() }
        while !mirror.initialSyncComplete { try await Task.sleep(for: .milliseconds(1)) }
        var lags: [Double] = []
        var rng = SystemRandomNumberGenerator()
        let period = Duration.seconds(1) / options.writesPerSecond
        let words = options.lagRegionBytes / 8
        for n in 1...options.lagWrites {
            let offset = Int.random(in: 0..<words, using: &rng) * 8
            let marker = UInt64(n) << 32 | UInt64.random(in: 0..<UInt64(UInt32.max), using: &rng)
            let start = ContinuousClock.now
            primary.bytes.storeBytes(of: marker, toByteOffset: offset, as: UInt64.self)
            probe.expect(chunk: offset / options.chunkSize, writtenAt: start, landedAt: .now)
            let deadline = start + .seconds(5)
            while true {
                if let lag = probe.lag() {
                    lags.append(lag.seconds)
                    break
                }
                guard ContinuousClock.now < deadline else {
                    throw ReplicationError.violation(ProtocolViolation(.internalError, "write \(n) was not acknowledged in 5 s"))
                }
                try await Task.sleep(for: .microseconds(50))
            }
            // An ACK is a promise that the bytes are in the replica's mapping.
            guard replica.bytes.load(fromByteOffset: offset, as: UInt64.self) == marker else {
                throw ReplicationError.violation(ProtocolViolation(.internalError, "write \(n) acknowledged but missing in the replica"))
            }
            let next = start + period
            if ContinuousClock.now < next { try await Task.sleep(until: next) }
        }
        await client.close()
        await server.close()
        log("lag: \(lags.count) writes at \(options.writesPerSecond)/s into \(options.lagRegionBytes >> 20) MiB, scan every \(options.scanInterval)")
        return lags
    }
}

/// Fills memory with xorshift bytes quickly (8 bytes a step).
func fillPattern(_ memory: UnsafeMutableRawBufferPointer, seed: UInt64) {
    var x = seed | 1
    var i = 0
    while i + 8 <= memory.count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        memory.storeBytes(of: x, toByteOffset: i, as: UInt64.self)
        i += 8
    }
    while i < memory.count { memory[i] = UInt8(truncatingIfNeeded: x); i += 1 }
}
