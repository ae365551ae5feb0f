import MemReplica
import MemReplicaBench
import MemReplicaQUIC
import ArgumentParser
import Foundation

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run a benchmark scenario (figures are ratios measured side by side in one run).",
        subcommands: [BenchTransportCommand.self, BenchSyncCommand.self, BenchDirtyCommand.self, BenchFaultsCommand.self,
                      BenchWANCommand.self, BenchMigrateCommand.self, BenchScaleCommand.self])
}

struct BenchTransportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transport",
        abstract: "Transport throughput and request/response latency on loopback, beside ngtcp2's example programs and TLS over TCP.")

    @Option(help: "Bytes to send per throughput run (suffixes K, M, G).")
    var size: String = "256M"
    @Option(help: "Streams the bytes are spread over.")
    var streams: Int = 8
    @Option(help: "Throughput runs per contender (the median is reported).")
    var runs: Int = 5
    @Option(help: "Request/response exchanges per latency measurement.")
    var iterations: Int = 2000
    @Option(help: "Connections per handshake measurement (full, resumed, 0-RTT; 0: none).")
    var handshakes: Int = 200
    @Option(help: "Congestion controller for QUIC: bbr, bbr1, cubic or reno.")
    var cc: String = "bbr"
    @Option(help: "Largest UDP payload QUIC sends on a path of unknown MTU (1452 fits Ethernet).")
    var maxUdpPayload: Int = 1452
    @Option(help: "Largest UDP payload QUIC sends to a peer on this host, as here (0: size packets as for any path).")
    var hostLocalPayload: Int = QUICConfiguration().hostLocalUDPPayloadSize ?? 0
    @Option(help: "Microseconds the QUIC loop polls before sleeping (0: off).")
    var busyPoll: Int = 0
    @Flag(help: "Send without pacing (bursts as the window allows).")
    var noPacing = false
    @Option(help: ArgumentHelp("Our transports to measure, comma-separated: quic, tcp, tcp-per-region.", valueName: "kinds"))
    var transports: String = TransportKind.allCases.map(\.rawValue).joined(separator: ",")
    @Flag(help: "Skip the gtlsserver/gtlsclient anchor.")
    var noStock = false
    @Flag(help: "Skip the TLS-over-TCP ceiling.")
    var noTcp = false
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    func validate() throws {
        guard parseByteSize(size) != nil else { throw ValidationError("--size: not a byte count: \(size)") }
        guard streams >= 1, streams <= 256 else { throw ValidationError("--streams must be 1...256") }
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
        guard iterations >= 1 else { throw ValidationError("--iterations must be at least 1") }
        guard handshakes >= 0 else { throw ValidationError("--handshakes must be 0 (none) or more") }
        guard QUICConfiguration.CongestionControl(rawValue: cc) != nil else {
            throw ValidationError("--cc must be \(QUICConfiguration.CongestionControl.choices)")
        }
        guard (1200...65527).contains(maxUdpPayload) else { throw ValidationError("--max-udp-payload must be 1200...65527") }
        guard hostLocalPayload == 0 || (1200...65527).contains(hostLocalPayload) else {
            throw ValidationError("--host-local-payload must be 0 or 1200...65527")
        }
        guard !kinds.isEmpty, kinds.count == transports.split(separator: ",").count else {
            throw ValidationError("--transports takes quic, tcp and tcp-per-region, comma-separated")
        }
    }

    private var kinds: [TransportKind] { transports.split(separator: ",").compactMap { TransportKind(rawValue: String($0)) } }

    func run() async throws {
        var options = TransportBenchmark.Options()
        options.totalBytes = parseByteSize(size)!
        options.streams = streams
        options.runs = runs
        options.latencyIterations = iterations
        options.handshakeIterations = handshakes
        options.includeStockNgtcp2 = !noStock
        options.includeTLSOverTCP = !noTcp
        options.transports = kinds
        options.quic.congestionControl = QUICConfiguration.CongestionControl(rawValue: cc)!
        options.quic.maxUDPPayloadSize = maxUdpPayload
        options.quic.hostLocalUDPPayloadSize = hostLocalPayload > 0 ? hostLocalPayload : nil
        options.quic.pacing = !noPacing
        if busyPoll > 0 { options.quic.busyPoll = .microseconds(busyPoll) }
        let work = NSTemporaryDirectory() + "memreplica-bench-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: work) }
        let bench = try TransportBenchmark(options: options, workDirectory: work, log: BenchOutput(json: json).progress)
        let report = try await bench.run()
        if try BenchOutput(json: json).printJSON(report) { return }
        print("")
        print("throughput, \(report.totalBytes >> 20) MiB over \(report.streams) streams, median of \(report.runs):")
        for t in report.throughput {
            print("  \(t.name.padding(toLength: 40, withPad: " ", startingAt: 0)) \(String(format: "%8.1f", t.medianMBps)) MB/s")
        }
        for (k, v) in report.ratios.sorted(by: { $0.key < $1.key }) {
            print("  ratio \(k): \(String(format: "%.2f", v))")
        }
        print("latency, \(options.requestBytes) B → \(options.responseBytes) B:")
        for l in report.latency {
            print("  \(l.name.padding(toLength: 40, withPad: " ", startingAt: 0)) p50 \(String(format: "%7.1f", l.p50Microseconds)) µs  p99 \(String(format: "%7.1f", l.p99Microseconds)) µs")
        }
        if !report.handshakes.isEmpty {
            print("handshakes, \(options.handshakeIterations) connections each (loopback: CPU, not round trips, dominates):")
        }
        for l in report.handshakes {
            print("  \(l.name.padding(toLength: 40, withPad: " ", startingAt: 0)) p50 \(String(format: "%7.1f", l.p50Microseconds)) µs  p99 \(String(format: "%7.1f", l.p99Microseconds)) µs")
        }
    }
}

struct BenchSyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Initial-sync throughput and write-to-replica lag of eager replication over QUIC on loopback.")

    @Option(help: "Region size for the initial sync (suffixes K, M, G).")
    var size: String = "1G"
    @Option(help: "Chunk size (power of two, 4K to 1M).")
    var chunk: String = "64K"
    @Option(help: "Initial-sync runs (the median is reported).")
    var runs: Int = 3
    @Option(help: "Writes per second into the primary while lag is measured.")
    var rate: Int = 200
    @Option(help: "Writes measured for lag.")
    var writes: Int = 500
    @Option(help: "Hash-scan interval in milliseconds on the primary.")
    var scanMs: Double = 2
    @Flag(help: "Measure only the memfd replicas, with and without PAGES (skip the digest-off, file and durable=true replicas).")
    var noDurable = false
    @Option(help: "What the initial sync's region holds: random, zeros, python-heap (a CPython heap that parsed its standard library), sqlite (a database sqlite3 wrote of this machine's package list).")
    var content: BenchContent = .random
    @Flag(help: "Print the report as JSON on stdout.")
    var json = false

    func validate() throws {
        guard parseByteSize(size) != nil, parseByteSize(chunk) != nil else { throw ValidationError("bad --size or --chunk") }
        guard runs >= 1, rate >= 1, writes >= 1, scanMs > 0 else { throw ValidationError("--runs, --rate, --writes and --scan-ms must be positive") }
    }

    func run() async throws {
        var options = SyncBenchmark.Options()
        options.syncBytes = parseByteSize(size)!
        options.chunkSize = parseByteSize(chunk)!
        options.runs = runs
        options.writesPerSecond = rate
        options.lagWrites = writes
        options.scanInterval = .microseconds(Int(scanMs * 1000))
        options.compareDurable = !noDurable
        options.content = content
        let work = NSTemporaryDirectory() + "memreplica-bench-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: work) }
        let report = try await SyncBenchmark(options: options, workDirectory: work, log: BenchOutput(json: json).progress).run()
        if try BenchOutput(json: json).printJSON(report) { return }
        for kind in report.kinds {
            print("\(kind.kind) replica: initial sync of \(report.syncBytes >> 20) MiB median \(String(format: "%.1f", kind.syncMedianMBps)) MB/s; "
                  + "lag write → replica ACK, \(kind.lagSamples) writes: p50 \(String(format: "%.2f", kind.lagP50Milliseconds)) ms, "
                  + "p99 \(String(format: "%.2f", kind.lagP99Milliseconds)) ms, max \(String(format: "%.2f", kind.lagMaxMilliseconds)) ms"
                  + (kind.lagWireBytesPerWrite.map { String(format: ", %.0f wire bytes per write", $0) } ?? ""))
        }
        if let wire = report.pagesLagWireRatio, let sync = report.pagesSyncRatio {
            print("PAGES against plain WRITEs (memfd, same run): \(String(format: "%.3f", wire)) × the wire bytes per random write, "
                  + "initial sync \(String(format: "%.2f", sync)) × the throughput")
        }
        if let digest = report.digestSyncRatio {
            print("SYNCED's digest (each chunk of the pass copied and hashed): initial sync \(String(format: "%.2f", digest)) × the same without")
        }
        if let sync = report.durableSyncRatio, let lag = report.durableLagP50Ratio {
            print("durable=true against the same file without: initial sync \(String(format: "%.2f", sync)) ×, lag p50 \(String(format: "%.2f", lag)) ×")
        }
    }
}
