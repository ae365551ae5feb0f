import MemReplicaWAN
/// One network condition of `bench wan`: the emulated path both transports
/// cross, and how many regions sync in bulk while chunks are read.
public struct WANScenario: Codable, Sendable, Hashable, CustomStringConvertible {
    /// Round-trip time the emulator adds (half in each direction).
    public var rttMilliseconds: Double
    /// Random loss applied to each direction independently.
    public var lossPercent: Double
    /// Regions syncing in bulk during the read phase (the read region comes on top).
    public var regions: Int
    /// Congestion controller of both QUIC and TCP (the same family, as the method asks).
    public var congestionControl: String

    public init(rttMilliseconds: Double, lossPercent: Double, regions: Int, congestionControl: String) {
        self.rttMilliseconds = rttMilliseconds
        self.lossPercent = lossPercent
        self.regions = regions
        self.congestionControl = congestionControl
    }

    public var description: String {
        "rtt \(formatNumber(rttMilliseconds)) ms, loss \(formatNumber(lossPercent)) %, \(regions) region\(regions == 1 ? "" : "s"), \(congestionControl)"
    }

    /// The emulator's two directions for this scenario.
    func linkProfiles(rateBitsPerSecond: UInt64?, queueLimitBytes: Int) -> (aToB: WANLinkProfile, bToA: WANLinkProfile) {
        let oneWay = Duration.microseconds(Int64((rttMilliseconds * 500).rounded()))
        let profile = WANLinkProfile(delay: oneWay, lossRate: lossPercent / 100, rateBitsPerSecond: rateBitsPerSecond,
                                     queueLimitBytes: queueLimitBytes)
        return (profile, profile)
    }
}

/// "0.2", "10", "1.5": no trailing zeros, for names and tables.
func formatNumber(_ value: Double) -> String {
    if value == value.rounded() { return String(Int(value)) }
    var text = String(format: "%.3f", value)
    while text.hasSuffix("0") { text.removeLast() }
    return text
}
