@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Foundation
import Testing

/// A clock tests move by hand.
final class ManualClock: Sendable {
    private let now = Locked(ContinuousClock.now)
    func read() -> ContinuousClock.Instant { now.withLock { $0 } }
    func advance(_ by: Duration) { now.withLock { $0 += by } }
    var source: @Sendable () -> ContinuousClock.Instant { { [self] in read() } }
}

/// HDR precision at three significant digits: within 0.1 % of the value.
private func close(_ measured: Double, _ expected: Double) -> Bool {
    abs(measured - expected) <= expected * 0.001 + 1e-9
}

@Suite("Stats: HDR latency histograms")
struct StatsHistogramTests {
    @Test("percentiles of 1 ms, 2 ms ... 1000 ms are those values, to three significant digits")
    func percentilesOfKnownInputs() {
        let histogram = LatencyHistogram()
        for ms in (1...1000).shuffled() { histogram.record(.milliseconds(ms)) }
        let s = histogram.summary()
        for d in [s.window, s.sinceStart] {
            #expect(d.count == 1000)
            #expect(close(d.p50Seconds, 0.500), "p50 \(d.p50Seconds)")
            #expect(close(d.p90Seconds, 0.900), "p90 \(d.p90Seconds)")
            #expect(close(d.p99Seconds, 0.990), "p99 \(d.p99Seconds)")
            #expect(close(d.p999Seconds, 0.999), "p99.9 \(d.p999Seconds)")
            #expect(close(d.maxSeconds, 1.000), "max \(d.maxSeconds)")
        }
        #expect(s.windowSeconds == 60)
    }

    @Test("a skewed distribution: 990 fast samples and 10 slow ones show in p99.9 and max, not p99")
    func tail() {
        let histogram = LatencyHistogram()
        for _ in 0..<990 { histogram.record(.microseconds(200)) }
        for _ in 0..<10 { histogram.record(.seconds(2)) }
        let d = histogram.summary().sinceStart
        #expect(close(d.p50Seconds, 0.0002) && close(d.p99Seconds, 0.0002), "\(d)")
        #expect(close(d.p999Seconds, 2) && close(d.maxSeconds, 2), "\(d)")
    }

    @Test("the window drops a slot's samples once it is `slots` slots old; since-start keeps them")
    func windowRollover() {
        let clock = ManualClock()
        let histogram = LatencyHistogram(slots: 3, slotDuration: .seconds(10), clock: clock.source)
        for _ in 0..<10 { histogram.record(.milliseconds(1)) }      // slot 0
        clock.advance(.seconds(15))
        for _ in 0..<5 { histogram.record(.milliseconds(100)) }     // slot 1
        #expect(histogram.summary().window.count == 15)
        clock.advance(.seconds(10))                                 // t = 25 s, slot 2: all three kept
        #expect(histogram.summary().window.count == 15)
        clock.advance(.seconds(5))                                  // t = 30 s, slot 3 reuses slot 0's place
        var s = histogram.summary()
        #expect(s.window.count == 5)
        #expect(close(s.window.p50Seconds, 0.1) && close(s.window.maxSeconds, 0.1))
        #expect(s.sinceStart.count == 15 && close(s.sinceStart.p50Seconds, 0.001))
        histogram.record(.milliseconds(7))                          // into the reused slot
        #expect(histogram.summary().window.count == 6)
        clock.advance(.seconds(100))                                // idle far longer than the window
        s = histogram.summary()
        #expect(s.window == LatencyDistribution())
        #expect(s.sinceStart.count == 16)
        #expect(s.windowSeconds == 30)
    }

    @Test("a sample past the hour is clamped to an hour, a negative one counts at the lowest value")
    func clamping() {
        let histogram = LatencyHistogram()
        histogram.record(.seconds(7200))
        histogram.record(.seconds(-1))
        let d = histogram.summary().sinceStart
        #expect(d.count == 2)
        #expect(close(d.maxSeconds, 3600))
        #expect(d.p50Seconds < 0.000002)
    }
}

@Suite("Stats: the peer's statistics model")
struct StatsModelTests {
    @Test("replication lag is send-to-ACK per version; time lag is the oldest unacknowledged send's age")
    func lagFromSendsAndAcks() throws {
        let clock = ManualClock()
        let stats = PeerStatistics(clock: clock.source)
        let t0 = clock.read()
        for version in UInt64(1)...4 {
            stats.willSend(region: "r", peer: "b", chunk: Int(version), bytes: 65536, version: version,
                           at: t0 + .milliseconds(Int(version)))
        }
        // Another mirror's versions count on their own.
        stats.willSend(region: "r", peer: "c", chunk: 0, bytes: 1000, version: 1, at: t0)
        clock.advance(.milliseconds(20))
        #expect(stats.timeLag(region: "r", peer: "b") == .milliseconds(19))
        stats.acknowledged(region: "r", peer: "b", version: 2, at: t0 + .milliseconds(12))
        let lag = try #require(stats.latency(.replicationLag, region: "r"))
        #expect(lag.sinceStart.count == 2)
        #expect(close(lag.sinceStart.p50Seconds, 0.010) && close(lag.sinceStart.maxSeconds, 0.011), "\(lag)")
        #expect(stats.timeLag(region: "r", peer: "b") == .milliseconds(17))
        #expect(stats.timeLag(region: "r", peer: "c") == .milliseconds(20))
        stats.acknowledged(region: "r", peer: "b", version: 4, at: clock.read())
        #expect(stats.timeLag(region: "r", peer: "b") == .zero)
        #expect(stats.transfers(region: "r") == PeerStatistics.Transfers(chunksPushed: 5, bytesPushed: 4 * 65536 + 1000))

        // A new subscription starts again at version 1: what the old one
        // left unacknowledged is dropped, not counted as lag forever.
        stats.willSend(region: "r", peer: "c", chunk: 0, bytes: 1000, version: 1, at: clock.read())
        #expect(stats.timeLag(region: "r", peer: "c") == .zero)
    }

    @Test("the dirty rate is the scans' total's change per second; a new tracker's smaller total starts it again")
    func dirtyRate() throws {
        let clock = ManualClock()
        let stats = PeerStatistics(clock: clock.source)
        stats.sampleDirty(region: "r", total: 100)
        #expect(stats.dirtyRate(region: "r") == nil)
        clock.advance(.seconds(2))
        stats.sampleDirty(region: "r", total: 300)
        #expect(stats.dirtyRate(region: "r") == 100)
        clock.advance(.seconds(20))                                 // the first two samples leave the window
        stats.sampleDirty(region: "r", total: 300)
        clock.advance(.seconds(4))
        stats.sampleDirty(region: "r", total: 340)
        #expect(stats.dirtyRate(region: "r") == 10)
        clock.advance(.seconds(1))
        stats.sampleDirty(region: "r", total: 5)
        #expect(stats.dirtyRate(region: "r") == nil)
    }

    @Test("reconnects count connections with one peer in one direction after the first")
    func reconnects() {
        let stats = PeerStatistics()
        #expect(stats.reconnects(fingerprint: "aa", initiatedLocally: true) == 0)
        for _ in 0..<3 { stats.connectionEstablished(fingerprint: "aa", initiatedLocally: true) }
        stats.connectionEstablished(fingerprint: "aa", initiatedLocally: false)
        #expect(stats.reconnects(fingerprint: "aa", initiatedLocally: true) == 2)
        #expect(stats.reconnects(fingerprint: "aa", initiatedLocally: false) == 0)
    }

    @Test("read latency and pulled chunks come from READs served")
    func readsServed() throws {
        let stats = PeerStatistics()
        stats.servedRead(region: "r", peer: "b", chunks: 16, bytes: 16 << 16, duration: .microseconds(300))
        stats.servedRead(region: "r", peer: "b", chunks: 1, bytes: 1 << 16, duration: .microseconds(100))
        #expect(stats.transfers(region: "r") == PeerStatistics.Transfers(chunksPulled: 17, bytesPulled: 17 << 16))
        let reads = try #require(stats.latency(.readLatency, region: "r"))
        #expect(reads.window.count == 2 && close(reads.window.maxSeconds, 0.0003))
        #expect(stats.latency(.faultLatency, region: "r") == nil)
    }

    @Test("a metrics address: a bare :PORT is loopback, a host is kept")
    func metricsAddress() throws {
        #expect(try MetricsServer.address(parsing: ":9464") == PeerAddress(parsing: "127.0.0.1:9464"))
        #expect(try MetricsServer.address(parsing: "0.0.0.0:9464") == PeerAddress(parsing: "0.0.0.0:9464"))
        var configuration = PeerConfiguration()
        try configuration.applyCommandLine(metrics: ":9100")
        #expect(configuration.metrics == (try PeerAddress(parsing: "127.0.0.1:9100")))
        #expect(PeerConfiguration().metrics == nil)
        #expect(throws: PeerConfigurationError.self) { try configuration.applyCommandLine(metrics: "9100") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let example = try PeerConfiguration(contentsOfFile: root.path + "/docs/peer.example.json")
        #expect(example.metrics == (try PeerAddress(parsing: "127.0.0.1:9464")))
    }
}
