/// The one JSON line a peer answers a control request with: the report
/// itself on success (so `status --json` output is the report, unwrapped),
/// or `{"error": "..."}`.
public enum ControlResponse: Codable, Sendable, Equatable {
    case status(StatusReport)
    case stats(StatsReport)
    case verify(VerifyReport)
    case migrate(MigrationReport)
    case error(String)

    /// `connections` is a key of a stats report only, `differingCount` of a
    /// verify report only: they tell the reports apart.
    /// `outcome` of a migration report only.
    private enum Keys: String, CodingKey { case error, connections, differingCount, outcome }

    public init(from decoder: any Decoder) throws {
        let keyed = try decoder.container(keyedBy: Keys.self)
        if let message = try keyed.decodeIfPresent(String.self, forKey: .error) {
            self = .error(message)
        } else if keyed.contains(.connections) {
            self = .stats(try StatsReport(from: decoder))
        } else if keyed.contains(.differingCount) {
            self = .verify(try VerifyReport(from: decoder))
        } else if keyed.contains(.outcome) {
            self = .migrate(try MigrationReport(from: decoder))
        } else {
            self = .status(try StatusReport(from: decoder))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .status(let report):
            try report.encode(to: encoder)
        case .stats(let report):
            try report.encode(to: encoder)
        case .verify(let report):
            try report.encode(to: encoder)
        case .migrate(let report):
            try report.encode(to: encoder)
        case .error(let message):
            var keyed = encoder.container(keyedBy: Keys.self)
            try keyed.encode(message, forKey: .error)
        }
    }
}
