/// A parsed JSON document, as the config file reader walks it: objects keep
/// their keys in file order, numbers keep their text (so a byte count is
/// never squeezed through a Double).
enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    case object(keys: [String], values: [String: JSONValue])

    /// "a string", "an array", ...: what a type error says it found.
    var kind: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let text): return "the number \(text)"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
