import MemReplica
import ArgumentParser
import Foundation

struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a running peer's connection and replication statistics: RTT, window, lag, latency percentiles.",
        discussion: """
            Latency percentiles come from HDR histograms, over the last minute (the window) and \
            since the peer started. --watch redraws every second until interrupted; when stdout \
            is not a terminal each report is appended instead.
            """)

    @Flag(help: "Print the peer's JSON report instead of a table.")
    var json = false

    @Flag(help: "Keep asking every --interval seconds until interrupted.")
    var watch = false

    @Option(help: ArgumentHelp("Seconds between reports with --watch.", valueName: "seconds"))
    var interval: Double = 1

    @Option(help: ArgumentHelp("The peer's control socket (default: STATE_DIR/control.sock).", valueName: "path"))
    var control: String?

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be from 0.1 to 3600 seconds") }
    }

    func run() async throws {
        let client = ControlClient(path: control ?? state.directory.controlSocketPath)
        // Redraw in place only for a person at a terminal; a pipe or a file
        // gets every report, in order.
        let redraw = watch && isatty(STDOUT_FILENO) == 1
        repeat {
            let report = try await client.stats()
            let text: String
            if json {
                text = String(decoding: try StatusReport.makeEncoder(pretty: true).encode(report), as: UTF8.self) + "\n"
            } else {
                text = StatsTable.render(report)
            }
            // Straight to the descriptor: a watcher piping into `tail -f`
            // sees each report when it is taken, not when a buffer fills.
            FileHandle.standardOutput.write(Data(((redraw ? "\u{1B}[H\u{1B}[2J" : "") + text + (watch && !redraw ? "\n" : "")).utf8))
            if watch { try await Task.sleep(for: .seconds(interval)) }
        } while watch
    }
}
