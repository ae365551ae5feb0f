import MemReplica
import MemReplicaWAN
/// The whole of one `bench wan` invocation: calibration, every run, the
/// per-scenario medians, the QUIC/TCP ratios from the same runs and the
/// design targets checked against them.
public struct WANBenchmarkReport: Codable, Sendable {
    public struct Settings: Codable, Sendable {
        public var runs: Int
        public var bulkBytes: Int
        public var bulkChunkBytes: Int
        public var bulkTimeLimitSeconds: Double
        public var readChunkBytes: Int
        public var readers: Int
        public var lagWrites: Int
        public var lagWritesPerSecond: Int
        public var scanIntervalMilliseconds: Double
        public var rateBitsPerSecond: UInt64?
        public var queueLimitBytes: Int
        public var lossAppliedTo: String
        /// The QUIC primary's bulk queue allowance, ms (-1: no gate; nil:
        /// a report from before the gate).
        public var bulkQueueAllowanceMilliseconds: Double? = nil
    }

    /// Medians over the runs of one transport in one scenario.
    public struct Summary: Codable, Sendable {
        public var scenario: WANScenario
        public var transport: String
        public var runs: Int
        public var readSamples: Int
        public var readP50Milliseconds: Double
        public var readP99Milliseconds: Double
        public var readP999Milliseconds: Double
        public var throughputMbps: Double
        public var bulkCompletedRuns: Int
        public var lagP50Milliseconds: Double?
        public var lagP99Milliseconds: Double?
        public var connectMilliseconds: Double
        public var reconnectMilliseconds: Double
        /// Median wire bytes per region byte of the bulk sync.
        public var wireBytesPerRegionByte: Double? = nil
        /// Median of the runs' mean wait in the emulated bottleneck's queue,
        /// primary → replica, during the bulk phase (`WANRunResult`).
        public var bulkQueueWaitMilliseconds: Double? = nil
    }

    /// QUIC against a TCP mode in one scenario (medians of the same runs).
    /// Below 1 QUIC is better for latencies; above 1 for throughput.
    public struct Ratio: Codable, Sendable {
        public var scenario: WANScenario
        public var against: String
        public var readP50: Double?
        public var readP99: Double?
        public var throughput: Double?
        public var lagP50: Double?
        public var connect: Double?
    }

    public struct TargetCheck: Codable, Sendable {
        public var target: String
        public var scenario: WANScenario
        public var measured: String
        public var met: Bool
    }

    public var startedAt: String
    public var seconds: Double
    public var quick: Bool
    public var settings: Settings
    /// One per distinct link (RTT and loss) of the matrix, before its first run.
    public var calibrations: [WANCalibrationReport]
    public var results: [WANRunResult]
    /// Runs whose connection ended under them (nil: none); not in `results`.
    public var failures: [WANRunFailure]?
    public var summaries: [Summary]
    public var ratios: [Ratio]
    public var targets: [TargetCheck]
}

extension WANBenchmarkReport {
    /// Medians per scenario and transport, ratios and target checks, from the runs.
    static func summarize(_ results: [WANRunResult]) -> (summaries: [Summary], ratios: [Ratio], targets: [TargetCheck]) {
        var order: [WANScenario] = []
        var byKey: [WANScenario: [String: [WANRunResult]]] = [:]
        for r in results {
            if byKey[r.scenario] == nil { order.append(r.scenario) }
            byKey[r.scenario, default: [:]][r.transport, default: []].append(r)
        }
        var summaries: [Summary] = []
        var ratios: [Ratio] = []
        var targets: [TargetCheck] = []
        for scenario in order {
            var here: [String: Summary] = [:]
            for kind in TransportKind.allCases {
                guard let runs = byKey[scenario]?[kind.rawValue], !runs.isEmpty else { continue }
                let lagged = runs.compactMap(\.lagP50Milliseconds)
                let summary = Summary(
                    scenario: scenario, transport: kind.rawValue, runs: runs.count,
                    readSamples: runs.map(\.readSamples).reduce(0, +),
                    readP50Milliseconds: median(runs.map(\.readP50Milliseconds)),
                    readP99Milliseconds: median(runs.map(\.readP99Milliseconds)),
                    readP999Milliseconds: median(runs.map(\.readP999Milliseconds)),
                    throughputMbps: median(runs.map(\.throughputMbps)),
                    bulkCompletedRuns: runs.filter(\.bulkCompleted).count,
                    lagP50Milliseconds: lagged.isEmpty ? nil : median(lagged),
                    lagP99Milliseconds: lagged.isEmpty ? nil : median(runs.compactMap(\.lagP99Milliseconds)),
                    connectMilliseconds: median(runs.map(\.connectMilliseconds)),
                    reconnectMilliseconds: median(runs.map(\.reconnectMilliseconds)),
                    wireBytesPerRegionByte: runs.compactMap(\.wireBytesPerRegionByte).isEmpty ? nil
                        : median(runs.compactMap(\.wireBytesPerRegionByte)),
                    bulkQueueWaitMilliseconds: runs.compactMap(\.bulkQueueWaitMilliseconds).isEmpty ? nil
                        : median(runs.compactMap(\.bulkQueueWaitMilliseconds)))
                here[kind.rawValue] = summary
                summaries.append(summary)
            }
            guard let quic = here[TransportKind.quic.rawValue] else { continue }
            for other in [TransportKind.tcp, .tcpPerRegion] {
                guard let tcp = here[other.rawValue] else { continue }
                func ratio(_ a: Double?, _ b: Double?) -> Double? {
                    guard let a, let b, b > 0, a > 0 else { return nil }
                    return a / b
                }
                ratios.append(Ratio(scenario: scenario, against: other.rawValue,
                                    readP50: ratio(quic.readP50Milliseconds, tcp.readP50Milliseconds),
                                    readP99: ratio(quic.readP99Milliseconds, tcp.readP99Milliseconds),
                                    throughput: ratio(quic.throughputMbps, tcp.throughputMbps),
                                    lagP50: ratio(quic.lagP50Milliseconds, tcp.lagP50Milliseconds),
                                    connect: ratio(quic.connectMilliseconds, tcp.connectMilliseconds)))
            }
            // The design targets, each where its scenario was run.
            if scenario.regions == 16, scenario.rttMilliseconds == 50, (1...2).contains(scenario.lossPercent),
               let tcp = here[TransportKind.tcp.rawValue] {
                let r = quic.readP99Milliseconds / max(tcp.readP99Milliseconds, .leastNonzeroMagnitude)
                targets.append(TargetCheck(
                    target: "QUIC p99 chunk read ≤ 0.5 × TCP-multiplexed p99", scenario: scenario,
                    measured: String(format: "%.1f ms vs %.1f ms (%.2f×)", quic.readP99Milliseconds, tcp.readP99Milliseconds, r),
                    met: r <= 0.5))
            }
            if scenario.rttMilliseconds == 50, scenario.regions > 1 {
                let tcpText = here[TransportKind.tcp.rawValue].map { String(format: "; tcp %.1f ms", $0.readP50Milliseconds) } ?? ""
                targets.append(TargetCheck(
                    target: "read while bulk sync runs: QUIC p50 ≤ RTT + 1 ms", scenario: scenario,
                    measured: String(format: "quic %.1f ms", quic.readP50Milliseconds) + tcpText,
                    met: quic.readP50Milliseconds <= scenario.rttMilliseconds + 1))
            }
            if scenario.rttMilliseconds == 50, scenario.lossPercent == 0, let lag = quic.lagP50Milliseconds {
                targets.append(TargetCheck(
                    target: "replication lag (write → replica holds it): QUIC p50 ≤ RTT/2 + 5 ms", scenario: scenario,
                    measured: String(format: "quic %.1f ms", lag), met: lag <= scenario.rttMilliseconds / 2 + 5))
            }
            if scenario.rttMilliseconds == 50, scenario.lossPercent == 0, let perRegion = here[TransportKind.tcpPerRegion.rawValue] {
                let r = quic.throughputMbps / max(perRegion.throughputMbps, .leastNonzeroMagnitude)
                targets.append(TargetCheck(
                    target: "throughput: QUIC ≥ 0.8 × TCP-per-region", scenario: scenario,
                    measured: String(format: "%.0f vs %.0f Mbit/s (%.2f×)", quic.throughputMbps, perRegion.throughputMbps, r),
                    met: r >= 0.8))
            }
        }
        return (summaries, ratios, targets)
    }
}

extension WANBenchmarkReport {
    /// What the smoke mode checks: every transport produced every number,
    /// and none beats the speed of light of the emulated path or is absurd.
    /// Empty when the pipeline works (it says nothing about speed).
    public func sanityProblems(transports: [TransportKind]) -> [String] {
        var problems: [String] = []
        for kind in transports where !results.contains(where: { $0.transport == kind.rawValue }) {
            problems.append("\(kind.rawValue): no results")
        }
        for f in failures ?? [] {
            problems.append("\(f.scenario.description), \(f.transport) run \(f.run): the connection ended: \(f.error)")
        }
        for r in results {
            let rtt = r.scenario.rttMilliseconds
            let name = "\(r.transport) run \(r.run) (\(r.scenario))"
            if r.readSamples == 0 { problems.append("\(name): no chunk reads completed during the bulk sync") }
            if r.readSamples > 0 && !(r.readP50Milliseconds >= rtt * 0.95 && r.readP50Milliseconds < 60_000) {
                problems.append("\(name): read p50 \(r.readP50Milliseconds) ms on a \(rtt) ms path")
            }
            if !(r.connectMilliseconds >= rtt * 0.95 && r.connectMilliseconds < 60_000) {
                problems.append("\(name): connect took \(r.connectMilliseconds) ms on a \(rtt) ms path")
            }
            if !(r.throughputMbps > 0 && r.bulkBytesSynced > 0) { problems.append("\(name): the bulk sync moved nothing") }
            if r.lagSamples == 0 { problems.append("\(name): no replication lag measured") }
            if let lag = r.lagP50Milliseconds, lag < rtt * 0.45 { problems.append("\(name): lag p50 \(lag) ms below half the RTT") }
            if r.packetsPassed == 0 { problems.append("\(name): the emulator forwarded no packets") }
        }
        return problems
    }
}
