@testable import MemReplica

/// The config file (Replication/JSONParser.swift, PeerConfiguration.swift).
/// For any bytes:
/// - the parser accepts them or throws its SyntaxError; what it accepts,
///   written back out as JSON, parses to the same value;
/// - the config reader accepts them or throws PeerConfigurationError.
struct ConfigTarget: FuzzTarget {
    mutating func run(_ input: [UInt8]) {
        if let value = try? JSONParser.parse(input) {
            let text = Self.render(value)
            guard let again = try? JSONParser.parse(Array(text.utf8)) else { fuzzFailure("rendered JSON does not parse: \(text)") }
            guard again == value else { fuzzFailure("rendered JSON parses to another value: \(text)") }
        }
        do {
            _ = try PeerConfiguration(json: input, file: "fuzz.json", folder: "/nonexistent/memreplica-fuzz")
        } catch is PeerConfigurationError {
        } catch {
            fuzzFailure("the config reader threw \(type(of: error)): \(error)")
        }
    }

    /// Compact JSON for a parsed value; strings escaped as RFC 8259 asks.
    static func render(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let text): return text
        case .string(let s): return quoted(s)
        case .array(let items): return "[" + items.map(render).joined(separator: ",") + "]"
        case .object(let keys, let values):
            return "{" + keys.map { quoted($0) + ":" + render(values[$0]!) }.joined(separator: ",") + "}"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case let c where c.value < 0x20:
                let hex = String(c.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
