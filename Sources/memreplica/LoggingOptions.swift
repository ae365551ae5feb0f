import ArgumentParser
import Logging

/// `--log-level`; logs go to stderr so stdout stays clean for results.
struct LoggingOptions: ParsableArguments {
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Level?

    enum Level: String, ExpressibleByArgument, CaseIterable {
        case trace, debug, info, notice, warning, error, critical

        var logger: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
    }

    /// Installs the stderr handler (once per process) and returns the root logger.
    func makeLogger(defaultLevel: Logger.Level) -> Logger {
        let level = logLevel?.logger ?? defaultLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: "memreplica")
    }
}
