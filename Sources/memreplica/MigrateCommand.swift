import MemReplica
import ArgumentParser
import Foundation

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Hand a region this peer owns over to another peer (live migration); exit 1 if aborted.",
        discussion: """
            Run on the source host: asks the running peer (its control socket) to hand REGION over to \
            the peer at --to, which must mirror the region from this peer (an eager mirror). Pre-copy: \
            the mirror converges while writers run; once the estimated downtime is below --max-downtime, \
            the writers are frozen (attached processes with SIGSTOP), the last changes are sent and \
            acknowledged, both copies are hashed, and the destination commits generation g+1. Then the \
            destination owns the region and this peer mirrors it back (--then mirror) or stops serving \
            it (--then stop). Attached writers here stay stopped: their session ends naming the new owner. \
            --verify after commits before comparing the copies (a shorter downtime; a difference is \
            reported, not prevented). Exit 0: handed over; 1: aborted (this peer still owns the region, \
            unharmed), the outcome is unconfirmed (the region stays fenced), or the copies differed after \
            the commit; 2: bad usage. See docs/MIGRATION.md.
            """)

    @Argument(help: "The region to hand over, as this peer exports it.")
    var region: String

    @Option(help: ArgumentHelp("The destination peer's listen address.", valueName: "host:port"))
    var to: String

    @Option(help: "precopy (rounds until the rest fits --max-downtime), postcopy (hand over at once; the destination pulls what it lacks), or hybrid (pre-copy rounds, post-copy once they stop converging).")
    var mode: String = MigrationMode.precopy.rawValue

    @Option(name: .customLong("max-downtime"), help: ArgumentHelp("Freeze once the estimated downtime is below this.", valueName: "ms"))
    var maxDowntime: Double = MigrationRequest.defaultMaxDowntimeMilliseconds

    @Option(help: "now, or quiet: wait (at most half the timeout) for the start of the next quiet phase of a cycle in the region's dirty rate.")
    var when: String = "now"

    @Option(help: ArgumentHelp("Abort (the source keeps the region) after this many seconds.", valueName: "seconds"))
    var timeout: Double = MigrationRequest.defaultTimeoutSeconds

    @Option(help: "After the hand-over: mirror the region from its new owner, or stop serving it.")
    var then: String = MigrationRequest.AfterHandOver.mirror.rawValue

    @Option(help: "Compare the two copies before the destination commits (a difference aborts), or right after (a shorter downtime; a difference is reported).")
    var verify: String = MigrationRequest.Verification.before.rawValue

    @Flag(help: "Print the JSON report instead of a summary.")
    var json = false

    @Option(help: ArgumentHelp("The peer's control socket (default: STATE_DIR/control.sock).", valueName: "path"))
    var control: String?

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard let mode = MigrationMode(rawValue: mode) else {
            throw ValidationError("--mode must be precopy, postcopy or hybrid, not '\(mode)'")
        }
        if mode == .postcopy, verify == MigrationRequest.Verification.after.rawValue {
            throw ValidationError("--verify after compares whole copies at the commit; a post-copy destination holds "
                                  + "its copy only once the fill ends (each chunk is checked as it arrives)")
        }
        guard MigrationRequest.Timing(rawValue: when) != nil else {
            throw ValidationError("--when must be now or quiet, not '\(when)'")
        }
        guard MigrationRequest.AfterHandOver(rawValue: then) != nil else {
            throw ValidationError("--then must be mirror or stop, not '\(then)'")
        }
        guard MigrationRequest.Verification(rawValue: verify) != nil else {
            throw ValidationError("--verify must be before or after, not '\(verify)'")
        }
        guard maxDowntime > 0 else { throw ValidationError("--max-downtime must be positive") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let request = MigrationRequest(region: region, destination: to, mode: MigrationMode(rawValue: mode)!,
                                       maxDowntimeMilliseconds: maxDowntime, timeoutSeconds: timeout,
                                       then: MigrationRequest.AfterHandOver(rawValue: then)!,
                                       verify: MigrationRequest.Verification(rawValue: verify)!,
                                       when: MigrationRequest.Timing(rawValue: when)!)
        let path = control ?? state.directory.controlSocketPath
        // The peer answers when the migration ended: up to the timeout twice
        // over (rounds, then asking a destination whose answer was lost).
        let client = ControlClient(path: path, timeout: .milliseconds(Int64((2 * timeout + 30) * 1000)))
        // On a terminal, a progress line from the peer's status while it runs.
        let showing = isatty(STDERR_FILENO) == 1 && !json
        let progress = showing ? Task { await Self.showProgress(of: region, controlPath: path) } : nil
        let report: MigrationReport
        do {
            report = try await client.migrate(request)
            progress?.cancel()
            await progress?.value
        } catch ControlError.refused(let message) {
            progress?.cancel()
            await progress?.value
            CommandRunner.printError(message)
            throw ExitCode(2)
        }
        if json {
            let data = try StatusReport.makeEncoder(pretty: true).encode(report)
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(Self.summary(report))
        }
        if !report.handedOver || report.verified == false { throw ExitCode(1) }
    }

    /// Rewrites one line on stderr every 200 ms with the running
    /// migration's phase, round, bytes still to send, estimated downtime
    /// and rate (from `status`); clears it when cancelled.
    static func showProgress(of region: String, controlPath: String) async {
        let client = ControlClient(path: controlPath, timeout: .seconds(2))
        var shown = false
        while !Task.isCancelled {
            if let status = try? await client.status(),
               let p = status.regions.first(where: { $0.name == region })?.migration {
                var line = "\(region): \(p.phase)"
                if p.round > 0 { line += ", round \(p.round)" }
                if p.pendingBytes > 0 { line += ", \(Format.bytes(p.pendingBytes)) to send" }
                if let estimate = p.estimatedDowntimeMilliseconds { line += String(format: ", downtime ~%.0f ms", estimate) }
                if p.rateBytesPerSecond > 0 { line += ", \(Format.bytes(UInt64(p.rateBytesPerSecond)))/s" }
                FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
                shown = true
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        if shown { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    static func summary(_ r: MigrationReport) -> String {
        var lines: [String] = []
        if r.handedOver {
            lines.append("\(r.region): handed over to \(r.destination) at generation \(r.generation)")
            if r.handedOverAs == .postcopy {
                let fill = r.fillSeconds.map { String(format: "every chunk there %.2f s after the commit", $0) }
                    ?? "the fill was NOT confirmed: this peer keeps serving its frozen copy to the new owner"
                lines.append("  post-copy\(r.mode == .hybrid ? " (after pre-copy rounds stopped converging)" : ""): "
                             + "\(r.chunksPulled ?? 0) chunks pulled by the destination; \(fill)")
            } else {
                switch r.verified {
                case true?: lines.append("  copies checked equal (keyed digest of the whole region, \(r.verify ?? "before") the commit)")
                case false?: lines.append("  THE COPIES DIFFER: the destination's copy is not the frozen state; this peer keeps its frozen copy")
                case nil: lines.append("  the copies were not compared: the destination's answer did not come")
                }
            }
        } else {
            lines.append("\(r.region): \(r.outcome.uppercased()): \(r.reason ?? "no reason given")")
        }
        func ms(_ v: Double?) -> String { v.map { String(format: "%.1f ms", $0) } ?? "-" }
        if r.downtimeMilliseconds != nil || r.handedOver {
            lines.append("  downtime \(ms(r.downtimeMilliseconds)) (final flush \(ms(r.finalFlushMilliseconds)), "
                         + "digest \(ms(r.digestMilliseconds)); estimated \(ms(r.estimatedDowntimeMilliseconds)))")
        }
        if let waited = r.waitedSeconds {
            lines.append(String(format: "  --when quiet: waited %.2f s", waited)
                         + (r.cycleSeconds.map { String(format: " for the quiet phase of a %.1f s cycle", $0) } ?? ", no cycle found"))
        }
        lines.append(String(format: "  %@, %.2f s in all, %@ sent for a %@ region (%.2f×), %d rounds, %llu chunks re-sent",
                            r.mode.rawValue, r.totalSeconds, Format.bytes(r.bytesSent), Format.bytes(r.regionBytes),
                            r.regionBytes == 0 ? 0 : Double(r.bytesSent) / Double(r.regionBytes), r.rounds, r.chunksResent))
        if !r.frozenProcesses.isEmpty {
            lines.append("  attached writers stopped: \(r.frozenProcesses.map(String.init).joined(separator: ", "))"
                         + (r.handedOver ? " (they stay stopped: restart them against the new owner)" : " (continued)"))
        }
        return lines.joined(separator: "\n")
    }
}
