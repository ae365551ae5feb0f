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

    public var description: String {
        func percent(_ x: Double) -> String { String(format: "%.3f %%", x * 100) }
        func ms(_ d: Duration) -> String { String(format: "%.3f ms", d.wanMilliseconds) }
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
