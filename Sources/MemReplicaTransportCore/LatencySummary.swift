/// One latency measure both ways: over the sliding window (recent
/// behaviour, what a person watching wants) and since the peer started
/// (what an incident report wants).
public struct LatencySummary: Codable, Sendable, Equatable {
    /// The window's length: samples older than this have left `window`.
    public var windowSeconds: Double
    public var window: LatencyDistribution
    public var sinceStart: LatencyDistribution

    public init(windowSeconds: Double, window: LatencyDistribution, sinceStart: LatencyDistribution) {
        self.windowSeconds = windowSeconds
        self.window = window
        self.sinceStart = sinceStart
    }
}
