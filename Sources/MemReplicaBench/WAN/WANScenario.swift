import MemReplica
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
    /// What the bulk regions hold (`BenchContent`): random bytes unless said.
    public var content: String
    /// `pages`: the replica offers PAGES frames and both codecs, as a
    /// peer's mirror does; `plain`: it offers nothing, every chunk travels
    /// whole as a WRITE (the wire format before PAGES).
    public var wire: String
    /// Streams each bulk region's initial pass is spread over (LANES), for
    /// every transport; nil: each transport's default (`LanePolicy.standard`).
    public var lanes: Int?

    public init(rttMilliseconds: Double, lossPercent: Double, regions: Int, congestionControl: String,
                content: String = BenchContent.random.rawValue, wire: String = WANWireMode.pages.rawValue, lanes: Int? = nil) {
        self.rttMilliseconds = rttMilliseconds
        self.lossPercent = lossPercent
        self.regions = regions
        self.congestionControl = congestionControl
        self.content = content
        self.wire = wire
        self.lanes = lanes
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(rttMilliseconds: try c.decode(Double.self, forKey: .rttMilliseconds),
                  lossPercent: try c.decode(Double.self, forKey: .lossPercent), regions: try c.decode(Int.self, forKey: .regions),
                  congestionControl: try c.decode(String.self, forKey: .congestionControl),
                  content: try c.decodeIfPresent(String.self, forKey: .content) ?? BenchContent.random.rawValue,
                  wire: try c.decodeIfPresent(String.self, forKey: .wire) ?? WANWireMode.pages.rawValue,
                  lanes: try c.decodeIfPresent(Int.self, forKey: .lanes))
    }

    public var description: String {
        var text = "rtt \(formatNumber(rttMilliseconds)) ms, loss \(formatNumber(lossPercent)) %, \(regions) region\(regions == 1 ? "" : "s"), \(congestionControl)"
        if content != BenchContent.random.rawValue { text += ", \(content)" }
        if wire == WANWireMode.plain.rawValue { text += ", plain WRITEs" } else if wire != WANWireMode.pages.rawValue { text += ", \(wire)" }
        if let lanes { text += ", \(lanes) lane\(lanes == 1 ? "" : "s")" }
        return text
    }

    /// The emulator's two directions for this scenario.
    func linkProfiles(rateBitsPerSecond: UInt64?, queueLimitBytes: Int) -> (aToB: WANLinkProfile, bToA: WANLinkProfile) {
        let oneWay = Duration.microseconds(Int64((rttMilliseconds * 500).rounded()))
        let profile = WANLinkProfile(delay: oneWay, lossRate: lossPercent / 100, rateBitsPerSecond: rateBitsPerSecond,
                                     queueLimitBytes: queueLimitBytes)
        return (profile, profile)
    }
}

/// What a `bench wan` replica offers in its HELLO.
/// `pages-lz4` and `pages-zstd`: PAGES with that codec the only one offered
/// (the primary's first choice, lz4, otherwise). Each keeps lanes.
public enum WANWireMode: String, Codable, Sendable, CaseIterable {
    case pages, plain
    case pagesLZ4 = "pages-lz4"
    case pagesZstd = "pages-zstd"

    var offered: WireCapabilities {
        switch self {
        case .pages: .all
        case .pagesLZ4: [.pages, .lz4, .lanes]
        case .pagesZstd: [.pages, .zstd, .lanes]
        case .plain: []
        }
    }
}

/// "0.2", "10", "1.5": no trailing zeros, for names and tables.
func formatNumber(_ value: Double) -> String {
    if value == value.rounded() { return String(Int(value)) }
    var text = String(format: "%.3f", value)
    while text.hasSuffix("0") { text.removeLast() }
    return text
}
