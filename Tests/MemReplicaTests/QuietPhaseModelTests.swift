@testable import MemReplica
import Testing

@Suite("--when quiet: the quiet-phase model")
struct QuietPhaseModelTests {
    /// A square wave: `burst` busy bins of every `period`, starting at
    /// `offset` into the first period, with noise up to `noise`.
    private static func square(count: Int, period: Int, burst: Int, offset: Int = 0, noise: Double = 0,
                               seed: UInt64 = 7) -> [Double] {
        var rng = SplitMix(seed)
        return (0..<count).map { t in
            let busy = (t + period - offset % period) % period < burst
            return (busy ? 1000 : 10) + Double(rng.next() % 1000) / 1000 * noise
        }
    }

    @Test("a square wave with noise: its period, and the quiet phase begins right after the next burst", arguments: [0, 3, 7, 12, 19])
    func squareWave(offset: Int) {
        // Period 20 bins (2 s), 5 busy: 4 periods seen. The series ends at
        // bin 80; busy bins are those where (t - offset) mod 20 < 5.
        let series = Self.square(count: 80, period: 20, burst: 5, offset: offset, noise: 50)
        let cycle = QuietPhaseModel().cycle(in: series)
        #expect(cycle?.periodBins == 20)
        #expect(cycle?.quietBins == 15)
        // The next bin is t = 80; the next burst starts at the next t ≡
        // offset (mod 20) and ends 5 bins later: the quiet phase starts then.
        let burstStart = (offset - 80 % 20 + 20) % 20
        let quietStart = (burstStart + 5) % 20
        // In the first quarter of the quiet phase already: now.
        let intoQuiet = (20 - quietStart) % 20
        let expected = intoQuiet < 15 && intoQuiet * 4 <= 15 ? 0 : quietStart
        #expect(cycle?.binsUntilQuiet == expected, "offset \(offset)")
    }

    @Test("no cycle: random, constant, idle, or too short a series")
    func noCycle() {
        var rng = SplitMix(3)
        let model = QuietPhaseModel()
        #expect(model.cycle(in: (0..<200).map { _ in Double(rng.next() % 1000) }) == nil)
        #expect(model.cycle(in: [Double](repeating: 300, count: 200)) == nil)
        #expect(model.cycle(in: [Double](repeating: 0, count: 200)) == nil)
        #expect(model.cycle(in: Self.square(count: 30, period: 20, burst: 5)) == nil, "fewer than three periods")
        // A steady writer whose rate wobbles by a tenth with a period: nothing quiet to wait for.
        #expect(model.cycle(in: (0..<120).map { 1000 + ($0 % 20 < 5 ? 100 : 0) }) == nil)
    }

    @Test("a harmonic is not taken for the period: the first strong peak wins")
    func firstPeak() {
        let series = Self.square(count: 120, period: 10, burst: 3, noise: 20)
        #expect(QuietPhaseModel().cycle(in: series)?.periodBins == 10)
    }

    @Test("the history bins the trackers' running totals or the counts of its own scans, and starts again when a tracker is new or gone")
    func history() {
        let history = DirtyRateHistory()
        history.record(totals: ["r": 10])
        history.record(totals: ["r": 15])
        history.record(totals: ["r": 15])
        history.record(totals: ["r": 40])
        #expect(history.series(of: "r") == [5, 0, 25])
        history.record(totals: ["r": 3])
        #expect(history.series(of: "r") == [])
        history.record(totals: ["r": 4])
        history.record()
        #expect(history.series(of: "r") == [])
        // Scanned every bin: the counts are the bins.
        history.record(changed: ["w": 7])
        history.record(changed: ["w": 0])
        history.record(changed: ["w": 12])
        #expect(history.series(of: "w") == [7, 0, 12])
    }
}

/// A small deterministic generator for test series.
private struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
