import Foundation

/// Where a benchmark's words go: progress lines to stdout, or to stderr
/// when stdout carries the JSON report (so it can be piped whole).
struct BenchOutput {
    let json: Bool

    var progress: @Sendable (String) -> Void {
        let toStandardError = json
        return { line in
            // Written through at once: a long run piped to a file or a CI
            // log shows its progress as it goes, not at exit.
            let handle = toStandardError ? FileHandle.standardError : FileHandle.standardOutput
            handle.write(Data((line + "\n").utf8))
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
