/// `--when quiet`: finds a cycle in a region's dirty-rate series and when
/// its next quiet phase begins (docs/MIGRATION.md, "`--when quiet`").
///
/// The model, small enough to check by hand:
/// 1. The series (changed chunks per bin, oldest first) minus its mean.
/// 2. Its autocorrelation at each lag from `minimumPeriodBins` to a third
///    of the series (at least three periods must be seen); the period is
///    the first local peak at or above `minimumCorrelation`. A random or
///    constant series has none: no cycle, migrate now.
/// 3. The mean of each phase over the whole periods at the series' end
///    (the phase profile). A phase is quiet when its mean is within a
///    quarter of the profile's range above its minimum; the quiet phase is
///    the longest run of quiet phases, wrapping around. A profile whose
///    quietest phase writes more than half of its busiest (a steady writer
///    with a wobble) has no quiet phase worth waiting for: no cycle.
/// 4. The next bin has phase 0 (the profile is aligned to the series'
///    end): the quiet phase begins in (start − 0) mod period bins, or now
///    when phase 0 lies in the first quarter of the quiet run.
public struct QuietPhaseModel: Sendable, Equatable {
    public var minimumPeriodBins = 3
    public var minimumCorrelation = 0.5
    public var periodsNeeded = 3
    /// The quiet phase writes at most this share of the busy one.
    public var maximumQuietShare = 0.5

    public init() {}

    public struct Cycle: Sendable, Equatable {
        public var periodBins: Int
        /// The autocorrelation at the period.
        public var correlation: Double
        /// Bins from the end of the series until the quiet phase begins.
        public var binsUntilQuiet: Int
        public var quietBins: Int
    }

    public func cycle(in series: [Double]) -> Cycle? {
        let n = series.count
        let longest = n / periodsNeeded
        guard longest >= minimumPeriodBins + 1 else { return nil }
        let mean = series.reduce(0, +) / Double(n)
        let centered = series.map { $0 - mean }
        let energy = centered.reduce(0) { $0 + $1 * $1 }
        guard energy > 1e-9 * Double(n) * max(1, mean * mean) else { return nil }
        func r(_ lag: Int) -> Double {
            var sum = 0.0
            for t in 0..<(n - lag) { sum += centered[t] * centered[t + lag] }
            return sum / energy * Double(n) / Double(n - lag)
        }
        let correlations = (0...(longest + 1)).map { $0 <= n - 1 ? r($0) : 0 }
        guard let period = (minimumPeriodBins...longest).first(where: { lag in
            correlations[lag] >= minimumCorrelation && correlations[lag] >= correlations[lag - 1]
                && correlations[lag] >= correlations[lag + 1]
        }) else { return nil }
        // The phase profile over the whole periods that end the series.
        let whole = (n / period) * period
        var profile = [Double](repeating: 0, count: period)
        for t in (n - whole)..<n { profile[(t - (n - whole)) % period] += series[t] }
        let low = profile.min()!, high = profile.max()!
        guard high > low, low <= high * maximumQuietShare else { return nil }
        let quiet = profile.map { $0 <= low + (high - low) / 4 }
        guard quiet.contains(false) else { return nil }
        // The longest circular run of quiet phases.
        var best = (start: 0, length: 0)
        for start in 0..<period where quiet[start] && !quiet[(start + period - 1) % period] {
            var length = 0
            while length < period && quiet[(start + length) % period] { length += 1 }
            if length > best.length { best = (start, length) }
        }
        guard best.length > 0 else { return nil }
        let into = (period - best.start) % period
        let until = into < best.length && into * 4 <= best.length ? 0 : (best.start + period) % period
        return Cycle(periodBins: period, correlation: correlations[period], binsUntilQuiet: until, quietBins: best.length)
    }
}
