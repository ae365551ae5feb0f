import MemReplica
import MemReplicaTransportCore
import ArgumentParser
import Foundation

/// Parses, runs, and turns every failure into one line on stderr and the
/// exit status the command-line contract promises (0 ok, 1 runtime, 2 usage).
enum CommandRunner {
    static func run(_ arguments: [String]) async -> Int32 {
        do {
            var command = try MemReplicaCommand.parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            return 0
        } catch {
            return report(error, arguments: arguments)
        }
    }

    private static func report(_ error: any Error, arguments: [String]) -> Int32 {
        if let exit = error as? ExitCode { return exit.rawValue }
        let code = MemReplicaCommand.exitCode(for: error)
        if code == .success {
            // --help, --version: the "error" is the text asked for.
            print(MemReplicaCommand.fullMessage(for: error))
            return 0
        }
        if code == .validationFailure || isUsageError(error) {
            let message = code == .validationFailure ? oneLine(MemReplicaCommand.message(for: error)) : describe(error)
            printError("\(message) (see 'memreplica \(commandPath(arguments))--help')")
            return 2
        }
        printError(describe(error))
        return 1
    }

    /// Errors in what the user typed that only surface once the command runs.
    private static func isUsageError(_ error: any Error) -> Bool {
        switch error {
        case TransportError.badAddress: return true
        case CertificateAuthority.Failure.badPeerName: return true
        case is PeerConfigurationError: return true
        default: return false
        }
    }

    static func describe(_ error: any Error) -> String {
        if let cocoa = error as? CocoaError { return cocoa.localizedDescription }
        return String(describing: error)
    }

    static func printError(_ message: String) {
        FileHandle.standardError.write(Data("memreplica: error: \(message)\n".utf8))
    }

    /// ArgumentParser's messages may list choices on "- value" lines and add
    /// a "Help:" line; the contract is one line, so fold them.
    private static func oneLine(_ message: String) -> String {
        var text = ""
        var choices: [String] = []
        for raw in message.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("- ") {
                choices.append(String(line.dropFirst(2)))
            } else if !line.isEmpty, !line.hasPrefix("Help:") {
                text += (text.isEmpty ? "" : " ") + line
            }
        }
        return choices.isEmpty ? text : text + " " + choices.joined(separator: ", ")
    }

    /// "peer " or "certs init " for the help hint, from the leading words.
    private static func commandPath(_ arguments: [String]) -> String {
        var path = ""
        var candidates = MemReplicaCommand.configuration.subcommands
        for word in arguments {
            guard let match = candidates.first(where: { $0.configuration.commandName == word }) else { break }
            path += word + " "
            candidates = match.configuration.subcommands
        }
        return path
    }
}
