import MemReplicaTransportCore

/// Configured against measured behaviour of an emulated link.
public struct WANCalibrationReport: Sendable, Codable, CustomStringConvertible {
    /// Relative agreement the calibration asks of RTT and loss.
    public static let tolerance = 0.05

    public var probes: Int
    /// The sum of both directions' delays.
    public var configuredRTT: Duration
    /// Median round trip of the UDP echo probes, and the fastest one.
    public var measuredRTT: Duration
    public var minimumRTT: Duration
    public var rttAgrees: Bool

    /// Per direction: configured loss rate, measured (probes lost on the way
    /// out / echoes lost on the way back), and the tolerance the agreement
    /// used: 5 % of the rate, or three binomial standard deviations for the
    /// number of probes when that is wider (fewer probes cannot resolve 5 %).
    public var configuredLossAToB: Double
    public var configuredLossBToA: Double
    public var measuredLossAToB: Double
    public var measuredLossBToA: Double
    public var lossToleranceAToB: Double
    public var lossToleranceBToA: Double
    public var lossAgrees: Bool

    /// Packets per second the forwarder moved while flooded (zero delay, no
    /// loss, no rate limit), nil when not measured.
    public var capacityPacketsPerSecond: Double?
    /// True when the kernel dropped flood packets the forwarder did not read
    /// in time, i.e. the capacity is the forwarder's limit, not the sender's.
    public var capacitySaturated: Bool
    /// Median echo round trip with zero delay configured (measured with the
    /// capacity): what the forwarder, both kernels and the echo threads add
    /// to any configured RTT.
    public var baselineRTT: Duration?

    /// What the forwarder did during the probes.
    public var statistics: WANEmulatorStatistics

    public var agrees: Bool { rttAgrees && lossAgrees }

    /// JSON keys: every duration a number of milliseconds, named so.
    private enum CodingKeys: String, CodingKey {
        case probes, rttAgrees, configuredLossAToB, configuredLossBToA, measuredLossAToB, measuredLossBToA
        case lossToleranceAToB, lossToleranceBToA, lossAgrees, capacityPacketsPerSecond, capacitySaturated, statistics
        case configuredRTTMilliseconds, measuredRTTMilliseconds, minimumRTTMilliseconds, baselineRTTMilliseconds
    }

    public init(probes: Int, configuredRTT: Duration, measuredRTT: Duration, minimumRTT: Duration, rttAgrees: Bool,
                configuredLossAToB: Double, configuredLossBToA: Double, measuredLossAToB: Double, measuredLossBToA: Double,
                lossToleranceAToB: Double, lossToleranceBToA: Double, lossAgrees: Bool, capacityPacketsPerSecond: Double?,
                capacitySaturated: Bool, baselineRTT: Duration?, statistics: WANEmulatorStatistics) {
        self.probes = probes; self.configuredRTT = configuredRTT; self.measuredRTT = measuredRTT
        self.minimumRTT = minimumRTT; self.rttAgrees = rttAgrees
        self.configuredLossAToB = configuredLossAToB; self.configuredLossBToA = configuredLossBToA
        self.measuredLossAToB = measuredLossAToB; self.measuredLossBToA = measuredLossBToA
        self.lossToleranceAToB = lossToleranceAToB; self.lossToleranceBToA = lossToleranceBToA; self.lossAgrees = lossAgrees
        self.capacityPacketsPerSecond = capacityPacketsPerSecond; self.capacitySaturated = capacitySaturated
        self.baselineRTT = baselineRTT; self.statistics = statistics
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func duration(_ key: CodingKeys) throws -> Duration { .nanoseconds(Int64((try c.decode(Double.self, forKey: key) * 1e6).rounded())) }
        self.init(probes: try c.decode(Int.self, forKey: .probes), configuredRTT: try duration(.configuredRTTMilliseconds),
                  measuredRTT: try duration(.measuredRTTMilliseconds), minimumRTT: try duration(.minimumRTTMilliseconds),
                  rttAgrees: try c.decode(Bool.self, forKey: .rttAgrees),
                  configuredLossAToB: try c.decode(Double.self, forKey: .configuredLossAToB),
                  configuredLossBToA: try c.decode(Double.self, forKey: .configuredLossBToA),
                  measuredLossAToB: try c.decode(Double.self, forKey: .measuredLossAToB),
                  measuredLossBToA: try c.decode(Double.self, forKey: .measuredLossBToA),
                  lossToleranceAToB: try c.decode(Double.self, forKey: .lossToleranceAToB),
                  lossToleranceBToA: try c.decode(Double.self, forKey: .lossToleranceBToA),
                  lossAgrees: try c.decode(Bool.self, forKey: .lossAgrees),
                  capacityPacketsPerSecond: try c.decodeIfPresent(Double.self, forKey: .capacityPacketsPerSecond),
                  capacitySaturated: try c.decode(Bool.self, forKey: .capacitySaturated),
                  baselineRTT: try c.decodeIfPresent(Double.self, forKey: .baselineRTTMilliseconds)
                      .map { .nanoseconds(Int64(($0 * 1e6).rounded())) },
                  statistics: try c.decode(WANEmulatorStatistics.self, forKey: .statistics))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(probes, forKey: .probes)
        try c.encode(configuredRTT.milliseconds, forKey: .configuredRTTMilliseconds)
        try c.encode(measuredRTT.milliseconds, forKey: .measuredRTTMilliseconds)
        try c.encode(minimumRTT.milliseconds, forKey: .minimumRTTMilliseconds)
        try c.encode(rttAgrees, forKey: .rttAgrees)
        try c.encode(configuredLossAToB, forKey: .configuredLossAToB)
        try c.encode(configuredLossBToA, forKey: .configuredLossBToA)
        try c.encode(measuredLossAToB, forKey: .measuredLossAToB)
        try c.encode(measuredLossBToA, forKey: .measuredLossBToA)
        try c.encode(lossToleranceAToB, forKey: .lossToleranceAToB)
        try c.encode(lossToleranceBToA, forKey: .lossToleranceBToA)
        try c.encode(lossAgrees, forKey: .lossAgrees)
        try c.encodeIfPresent(capacityPacketsPerSecond, forKey: .capacityPacketsPerSecond)
        try c.encode(capacitySaturated, forKey: .capacitySaturated)
        try c.encodeIfPresent(baselineRTT?.milliseconds, forKey: .baselineRTTMilliseconds)
        try c.encode(statistics, forKey: .statistics)
    }

    public var description: String {
        func percent(_ x: Double) -> String { String(format: "%.3f %%", x * 100) }
        func ms(_ d: Duration) -> String { String(format: "%.3f ms", d.milliseconds) }
        var lines = [
            "probes: \(probes) UDP echoes A→B→A",
            "RTT: configured \(ms(configuredRTT)), measured median \(ms(measuredRTT)) (min \(ms(minimumRTT))): "
                + (rttAgrees ? "agrees within 5 %" : "DOES NOT agree within 5 %"),
            "loss A→B: configured \(percent(configuredLossAToB)), measured \(percent(measuredLossAToB)) (tolerance ±\(percent(lossToleranceAToB)))",
            "loss B→A: configured \(percent(configuredLossBToA)), measured \(percent(measuredLossBToA)) (tolerance ±\(percent(lossToleranceBToA)))",
            "loss: " + (lossAgrees ? "agrees" : "DOES NOT agree"),
        ]
        if let baseline = baselineRTT { lines.append("baseline RTT at zero configured delay: \(ms(baseline))") }
        if let capacity = capacityPacketsPerSecond {
            lines.append(String(format: "forwarder capacity: %.0f packets/s", capacity)
                + (capacitySaturated ? " (saturated: the kernel dropped what it could not take)" : " (lower bound: the sender did not saturate it)"))
        }
        let overload = (statistics.aToB.kernelTxDropped ?? 0) + (statistics.bToA.kernelTxDropped ?? 0)
        if overload > 0 {
            lines.append("the forwarder fell behind during the probes (the kernel dropped \(overload) packets, counted as loss): "
                + "probe at a lower rate")
        }
        lines.append(statistics.description)
        return lines.joined(separator: "\n")
    }
}
