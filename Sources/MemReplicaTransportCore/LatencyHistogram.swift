import MemReplicaSystem
import Histogram

/// Latency samples in HDR histograms: one since start, and a sliding window
/// made of `slots` sub-histograms of `slotDuration` each. A sample goes into
/// the current slot; when time moves past a slot's end the oldest slot is
/// cleared and reused, so the window covers between `slots - 1` and `slots`
/// slot lengths (the current slot is partly filled). Rotation happens
/// lazily on each call, so an idle histogram costs nothing.
///
/// Values are nanoseconds from 1 µs to one hour at three significant
/// digits; longer samples are clamped to an hour (a lag that long is an
/// outage, and the exact figure no longer matters). Thread-safe: fed from
/// replication tasks and the fault-handling threads, read by the control socket.
public final class LatencyHistogram: Sendable {
    public let slots: Int
    public let slotDuration: Duration
    private let clock: @Sendable () -> ContinuousClock.Instant
    private let origin: ContinuousClock.Instant
    private let state: Locked<State>

    static let lowest: UInt64 = 1_000
    static let highest: UInt64 = 3_600_000_000_000

    private struct State {
        var sinceStart: Histogram<UInt64>
        var ring: [Histogram<UInt64>]
        /// Index, counted from `origin`, of the slot samples go into now.
        var currentSlot: Int64 = 0
    }

    /// `clock` is injectable so that tests can move time past slot ends.
    public init(slots: Int = 6, slotDuration: Duration = .seconds(10),
                clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        precondition(slots >= 1 && slotDuration > .zero, "a window needs at least one slot of positive length")
        self.slots = slots
        self.slotDuration = slotDuration
        self.clock = clock
        origin = clock()
        let empty = Self.emptyHistogram()
        state = Locked(State(sinceStart: empty, ring: Array(repeating: empty, count: slots)))
    }

    /// The window's nominal length: samples older than this are gone from it.
    public var windowLength: Duration { slotDuration * slots }

    public func record(_ latency: Duration) {
        let nanoseconds = Self.nanoseconds(latency)
        let now = clock()
        state.withLock { s in
            rotate(&s, to: now)
            _ = s.sinceStart.record(nanoseconds)
            _ = s.ring[Self.ringIndex(s.currentSlot, slots)].record(nanoseconds)
        }
    }

    public func summary() -> LatencySummary {
        let now = clock()
        let (window, sinceStart) = state.withLock { s -> (Histogram<UInt64>, Histogram<UInt64>) in
            rotate(&s, to: now)
            var merged = Self.emptyHistogram()
            for slot in s.ring { merged.add(slot) }
            return (merged, s.sinceStart)
        }
        return LatencySummary(windowSeconds: windowLength.seconds, window: Self.distribution(window),
                              sinceStart: Self.distribution(sinceStart))
    }

    /// Clears every slot that ended between the last call and `now`; after
    /// a gap longer than the window that is all of them.
    private func rotate(_ s: inout State, to now: ContinuousClock.Instant) {
        let slot = Int64(origin.duration(to: now) / slotDuration)
        guard slot > s.currentSlot else { return }
        let cleared = min(slot - s.currentSlot, Int64(slots))
        for offset in 1...cleared {
            s.ring[Self.ringIndex(s.currentSlot + offset, slots)].reset()
        }
        s.currentSlot = slot
    }

    private static func ringIndex(_ slot: Int64, _ slots: Int) -> Int { Int(slot % Int64(slots)) }

    private static func emptyHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: lowest, highestTrackableValue: highest, numberOfSignificantValueDigits: .three)
    }

    /// Clamped to the histogram's range: an hour-long stall still counts.
    package static func nanoseconds(_ d: Duration) -> UInt64 { min(d.saturatingNanoseconds, highest) }

    private static func distribution(_ h: Histogram<UInt64>) -> LatencyDistribution {
        guard h.totalCount > 0 else { return LatencyDistribution() }
        func seconds(_ ns: UInt64) -> Double { Double(ns) / 1e9 }
        // HDR reports a bucket's highest equivalent value; the max is the
        // same, so p100 never reads below p99.9.
        return LatencyDistribution(count: h.totalCount, p50Seconds: seconds(h.valueAtPercentile(50)),
                                   p90Seconds: seconds(h.valueAtPercentile(90)), p99Seconds: seconds(h.valueAtPercentile(99)),
                                   p999Seconds: seconds(h.valueAtPercentile(99.9)), maxSeconds: seconds(h.max))
    }
}
