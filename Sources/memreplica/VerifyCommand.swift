import MemReplica
import ArgumentParser
import Foundation

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare a replica with its primary by SHA-256 digests; exit 1 on any difference.",
        discussion: """
            Asks the peer that mirrors REGION to fetch SHA-256 digests of the primary's chunks over \
            the protocol and compare them with its own copy: groups of chunks first, then each \
            chunk of the groups that differ. Chunks that differ are checked again a few times, since \
            a primary being written is ahead of its replica for a moment. A lazy replica compares \
            the chunks it holds. Prints the first differing chunks.
            """)

    @Argument(help: "The replica region's name, as the running peer knows it.")
    var region: String

    @Flag(help: "Print the JSON report instead of a summary.")
    var json = false

    @Option(help: ArgumentHelp("Give up after this many seconds (default 600).", valueName: "seconds"))
    var timeout: Double = 600

    @Option(help: ArgumentHelp("The peer's control socket (default: STATE_DIR/control.sock).", valueName: "path"))
    var control: String?

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let path = control ?? state.directory.controlSocketPath
        let client = ControlClient(path: path, timeout: .milliseconds(Int64(timeout * 1000)))
        let report = try await client.verify(region)
        if json {
            let data = try StatusReport.makeEncoder(pretty: true).encode(report)
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(Self.summary(report))
        }
        if !report.equal { throw ExitCode(1) }
    }

    static func summary(_ r: VerifyReport) -> String {
        var lines: [String] = []
        let held = r.lazy ? " (\(r.compared) held, \(r.missing) not pulled yet)" : ""
        if r.equal {
            lines.append("\(r.region): equal to the primary at \(r.source): \(r.compared) of \(r.chunks) chunks compared\(held)")
        } else {
            let shown = r.differingChunks.map(String.init).joined(separator: ", ")
            lines.append("\(r.region): DIFFERS from the primary at \(r.source): \(r.differingCount) of \(r.compared) chunks\(held)")
            lines.append("  first differing chunks (\(r.chunkSize)-byte): \(shown)\(r.differingCount > r.differingChunks.count ? ", ..." : "")")
        }
        lines.append("  sha256 tree: primary \(r.primaryDigest.prefix(16))…, replica \(r.replicaDigest.prefix(16))… "
                     + "(\(r.group) chunks per leaf); \(String(format: "%.2f", r.seconds)) s")
        return lines.joined(separator: "\n")
    }
}
