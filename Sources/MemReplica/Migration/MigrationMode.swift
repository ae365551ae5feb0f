/// How a region is handed over (docs/MIGRATION.md, "Modes").
public enum MigrationMode: String, Sendable, Codable, CaseIterable {
    /// Rounds of changed chunks until what is left fits the downtime
    /// budget; then freeze, last flush, hand-over.
    case precopy
    /// Freeze at once, hand over, the destination pulls what it lacks.
    case postcopy
    /// Pre-copy rounds, post-copy once the rounds stop converging.
    case hybrid

    var wireValue: UInt64 {
        switch self {
        case .precopy: 0
        case .postcopy: 1
        case .hybrid: 2
        }
    }

    init?(wireValue: UInt64) {
        switch wireValue {
        case 0: self = .precopy
        case 1: self = .postcopy
        case 2: self = .hybrid
        default: return nil
        }
    }
}
