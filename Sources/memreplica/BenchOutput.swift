import Foundation

/// Where a benchmark's words go: progress lines to stdout, or to stderr
/// when stdout carries the JSON report (so it can be piped whole).
struct BenchOutput {
    let json: Bool

    var progress: @Sendable (String) -> Void {
        let toStandardError = json
        return { line in
            if toStandardError { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
        }
    }

    /// Prints the report as JSON when asked; true if it did.
    func printJSON(_ report: some Encodable) throws -> Bool {
        guard json else { return false }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try encoder.encode(report), as: UTF8.self))
        return true
    }
}
