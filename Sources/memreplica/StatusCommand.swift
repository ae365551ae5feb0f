import MemReplica
import ArgumentParser
import Foundation

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running peer's address, identity and connected peers with their RTT.")

    @Flag(help: "Print the peer's JSON report instead of a table.")
    var json = false

    @Option(help: ArgumentHelp("The peer's control socket (default: STATE_DIR/control.sock).", valueName: "path"))
    var control: String?

    @OptionGroup var state: StateOptions

    func run() async throws {
        let path = control ?? state.directory.controlSocketPath
        let report = try await ControlClient(path: path).status()
        if json {
            let data = try StatusReport.makeEncoder(pretty: true).encode(report)
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(StatusTable.render(report), terminator: "")
        }
    }
}
