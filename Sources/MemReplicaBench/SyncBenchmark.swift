import MemReplica
import MemReplicaTransportCore
import Foundation
import Logging

/// `memreplica bench sync`: replication over QUIC on loopback.
/// - Initial sync: a mirror of a region of random bytes, from SUBSCRIBE to
///   SYNCED, in MB/s (median of runs), into three kinds of replica side by
///   side: a memfd, a file in the work folder, and the same file mirrored
///   `durable` (every chunk msync'd before its ACK, the state file kept).
/// - Lag: single-word writes into the live primary at a fixed rate; lag is
///   the time from the write until the primary receives the replica's ACK
///   of a version carrying it (then the bench checks the replica's mapping
///   holds the bytes). It includes the dirty tracker's interval. Measured
///   for the same three replicas.
public struct SyncBenchmark {
    public struct Options: Sendable {
        public var syncBytes = 1 << 30
        public var chunkSize = ExportSpec.defaultChunkSize
        public var runs = 3
        public var lagRegionBytes = 64 << 20
        public var lagWrites = 500
        public var writesPerSecond = 200
        public var scanInterval: Duration = .milliseconds(2)
        /// Also measure file-backed and durable replicas (in the work folder).
        public var compareDurable = true
        /// What the initial sync's region holds.
        public var content: BenchContent = .random
        public init() {}
    }

    /// Where a replica keeps its bytes. `memfdNoDigest` is the memfd replica
    /// of a primary that sends SYNCED without a digest: what the self-check
    /// (a copy and a keyed hash of each chunk of the pass) costs.
    /// `memfdPlain` is the memfd replica of a mirror that offers no PAGES
    /// frames: every chunk whole, the wire format before them.
    public enum ReplicaKind: String, Codable, Sendable, CaseIterable {
        case memfd, memfdNoDigest, memfdPlain, file, durable

        var offered: WireCapabilities { self == .memfdPlain ? [] : .all }
    }

    public struct KindResult: Codable, Sendable {
        public var kind: ReplicaKind
        public var syncRunsMBps: [Double]
        public var syncMedianMBps: Double
        public var lagSamples: Int
        public var lagP50Milliseconds: Double
        public var lagP99Milliseconds: Double
        public var lagMaxMilliseconds: Double
        /// WRITE/PAGES bytes sent per 8-byte write of the lag phase.
        public var lagWireBytesPerWrite: Double?
    }

    public struct Report: Codable, Sendable {
        public var content: BenchContent
        public var syncBytes: Int
        public var chunkSize: Int
        /// The memfd replica's figures (as before the durable comparison).
        public var syncRunsMBps: [Double]
        public var syncMedianMBps: Double
        public var lagRegionBytes: Int
        public var scanIntervalMilliseconds: Double
        public var writesPerSecond: Int
        public var lagSamples: Int
        public var lagP50Milliseconds: Double
        public var lagP99Milliseconds: Double
        public var lagMaxMilliseconds: Double
        /// Every replica kind measured, in the order run.
        public var kinds: [KindResult]
        /// The durable replica's initial-sync throughput over the plain
        /// file's, and its lag p50 over the plain file's (same run).
        public var durableSyncRatio: Double?
        public var durableLagP50Ratio: Double?
        /// Initial sync with SYNCED's digest over without (memfd, same run).
        public var digestSyncRatio: Double?
        /// Wire bytes per random 8-byte write with PAGES over plain WRITEs,
        /// and initial-sync throughput with over without (memfd, same run).
        public var pagesLagWireRatio: Double?
        public var pagesSyncRatio: Double?
    }

    public let options: Options
    let peers: BenchPeers
    let workDirectory: String
    let log: @Sendable (String) -> Void

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        self.workDirectory = workDirectory
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    private func quietLogger() -> Logger {
        var l = Logger(label: "memreplica.bench")
        l.logLevel = .warning
        return l
    }

    /// A fresh replica region of `kind` and, for a durable one, its state.
    private func makeReplica(_ kind: ReplicaKind, name: String, size: Int) throws -> (Region, DurableMirrorState?) {
        switch kind {
        case .memfd, .memfdNoDigest, .memfdPlain:
            return (try Region(name: name, backing: .memory, size: size, chunkSize: options.chunkSize), nil)
        case .file, .durable:
            let path = workDirectory + "/replica-\(name)-\(kind).bin"
            try? FileManager.default.removeItem(atPath: path)
            let region = try Region(name: name, backing: .file(path: path), size: size, chunkSize: options.chunkSize)
            guard kind == .durable else { return (region, nil) }
            let state = StateDirectory(explicit: workDirectory + "/state-\(name)", environment: [:])
            try state.create()
            try? FileManager.default.removeItem(atPath: state.path + "/mirrors")
            return (region, try DurableMirrorState(stateDirectory: state, region: name))
        }
    }

    public func run() async throws -> Report {
        let primary = try Region(name: "sync", backing: .memory, size: options.syncBytes, chunkSize: options.chunkSize)
        let image = try options.content.fill(primary.bytes, workDirectory: workDirectory)
        if options.content != .random { log("content \(options.content.rawValue): \(options.syncBytes >> 20) MiB from a \(image >> 20) MiB image") }
        let kinds: [ReplicaKind] = options.compareDurable ? ReplicaKind.allCases : [.memfd, .memfdPlain]
        var syncs: [ReplicaKind: [Double]] = [:]
        // Kinds take turns within each run, so a noisy moment hits all.
        for run in 1...options.runs {
            for kind in kinds {
                let mbps = try await initialSync(of: primary, into: kind)
                syncs[kind, default: []].append(mbps)
                log("initial sync run \(run), \(kind) replica: \(String(format: "%.1f", mbps)) MB/s "
                    + "(\(options.syncBytes >> 20) MiB, verified equal)")
            }
        }
        var results: [KindResult] = []
        for kind in kinds {
            let (unsorted, wire) = try await measureLag(into: kind)
            let lags = unsorted.sorted()
            func pct(_ p: Double) -> Double { lags[min(lags.count - 1, Int(Double(lags.count) * p))] * 1000 }
            results.append(KindResult(kind: kind, syncRunsMBps: syncs[kind]!, syncMedianMBps: median(syncs[kind]!),
                                      lagSamples: lags.count, lagP50Milliseconds: pct(0.5), lagP99Milliseconds: pct(0.99),
                                      lagMaxMilliseconds: (lags.last ?? 0) * 1000,
                                      lagWireBytesPerWrite: Double(wire) / Double(max(lags.count, 1))))
        }
        let memfd = results[0]
        let file = results.first { $0.kind == .file }, durable = results.first { $0.kind == .durable }
        let noDigest = results.first { $0.kind == .memfdNoDigest }
        let plain = results.first { $0.kind == .memfdPlain }
        return Report(content: options.content, syncBytes: options.syncBytes, chunkSize: options.chunkSize, syncRunsMBps: memfd.syncRunsMBps,
                      syncMedianMBps: memfd.syncMedianMBps, lagRegionBytes: options.lagRegionBytes,
                      scanIntervalMilliseconds: options.scanInterval.milliseconds, writesPerSecond: options.writesPerSecond,
                      lagSamples: memfd.lagSamples, lagP50Milliseconds: memfd.lagP50Milliseconds,
                      lagP99Milliseconds: memfd.lagP99Milliseconds, lagMaxMilliseconds: memfd.lagMaxMilliseconds,
                      kinds: results,
                      durableSyncRatio: durable.flatMap { d in file.map { d.syncMedianMBps / $0.syncMedianMBps } },
                      durableLagP50Ratio: durable.flatMap { d in file.map { d.lagP50Milliseconds / $0.lagP50Milliseconds } },
                      digestSyncRatio: noDigest.map { memfd.syncMedianMBps / $0.syncMedianMBps },
                      pagesLagWireRatio: plain.flatMap { p in memfd.lagWireBytesPerWrite.flatMap { m in p.lagWireBytesPerWrite.map { m / $0 } } },
                      pagesSyncRatio: plain.map { memfd.syncMedianMBps / $0.syncMedianMBps })
    }

    /// One initial sync of `primary` into a fresh replica of `kind`, in MB/s.
    private func initialSync(of primary: Region, into kind: ReplicaKind) async throws -> Double {
        let exports = RegionExports([.init(region: primary)], scanInterval: .seconds(3600),
                                    syncedDigests: kind != .memfdNoDigest, logger: quietLogger())
        let (server, client, conn, serving) = try await peers.connectServing(exports, offered: kind.offered)
        let (replica, durable) = try makeReplica(kind, name: "sync", size: options.syncBytes)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false, durable: durable)
        let start = ContinuousClock.now
        let task = Task { try await mirror.run(over: conn) }
        while !mirror.initialSyncComplete { try await Task.sleep(for: .microseconds(200)) }
        let seconds = (ContinuousClock.now - start).seconds
        task.cancel()
        serving.cancel()
        await client.close()
        await server.close()
        guard memcmp(replica.bytes.baseAddress!, primary.bytes.baseAddress!, options.syncBytes) == 0 else {
            throw ReplicationError.violation(ProtocolViolation(.internalError, "\(kind) replica differs after the initial sync"))
        }
        if let durable, durable.record?.complete != true {
            throw ReplicationError.violation(ProtocolViolation(.internalError, "the durable replica's state does not say complete"))
        }
        return Double(options.syncBytes) / seconds / 1e6
    }

    /// Seconds from each write in the primary until the primary holds the
    /// replica's ACK of a version that carries it; and the WRITE/PAGES
    /// bytes the writes cost.
    private func measureLag(into kind: ReplicaKind) async throws -> (lags: [Double], wireBytes: UInt64) {
        let primary = try Region(name: "lag", backing: .memory, size: options.lagRegionBytes, chunkSize: options.chunkSize)
        let probe = LagProbe(region: "lag")
        let exports = RegionExports([.init(region: primary)], scanInterval: options.scanInterval, observer: probe,
                                    syncedDigests: kind != .memfdNoDigest, logger: quietLogger())
        let (server, client, conn, serving) = try await peers.connectServing(exports, offered: kind.offered)
        let (replica, durable) = try makeReplica(kind, name: "lag", size: options.lagRegionBytes)
        let mirror = RegionMirror(region: replica, durable: durable)
        let task = Task { try await mirror.run(over: conn) }
        defer { task.cancel(); serving.cancel() }
        while !mirror.initialSyncComplete { try await Task.sleep(for: .milliseconds(1)) }
        let wireBefore = exports.wireSavings()["lag"]?.wireBytes ?? 0
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
        let wire = (exports.wireSavings()["lag"]?.wireBytes ?? 0) - wireBefore
        await client.close()
        await server.close()
        log("lag, \(kind) replica: \(lags.count) writes at \(options.writesPerSecond)/s into \(options.lagRegionBytes >> 20) MiB, "
            + "scan every \(options.scanInterval), \(wire / UInt64(max(lags.count, 1))) wire bytes per write")
        return (lags, wire)
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
