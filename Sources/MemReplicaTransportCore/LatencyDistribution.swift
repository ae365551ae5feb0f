/// Percentiles of a set of latency samples, in seconds, as `stats --json`
/// reports them. Values carry HDR histogram precision: three significant
/// digits, so p99 of 1.2345 ms reads 1.234 or 1.235 ms.
public struct LatencyDistribution: Codable, Sendable, Equatable {
    public var count: UInt64
    public var p50Seconds: Double
    public var p90Seconds: Double
    public var p99Seconds: Double
    public var p999Seconds: Double
    public var maxSeconds: Double

    public init(count: UInt64 = 0, p50Seconds: Double = 0, p90Seconds: Double = 0, p99Seconds: Double = 0,
                p999Seconds: Double = 0, maxSeconds: Double = 0) {
        self.count = count
        self.p50Seconds = p50Seconds
        self.p90Seconds = p90Seconds
        self.p99Seconds = p99Seconds
        self.p999Seconds = p999Seconds
        self.maxSeconds = maxSeconds
    }
}
