import ArgumentParser
import Foundation
import Logging
import MemReplica

/// `--cert/--key/--ca`: all three name a real PKI; none means the state
/// folder's development CA. Anything in between is a mistake worth stopping.
struct TLSOptions: ParsableArguments {
    @Option(help: ArgumentHelp("This peer's certificate (PEM).", valueName: "file"))
    var cert: String?
    @Option(help: ArgumentHelp("This peer's private key (PEM).", valueName: "file"))
    var key: String?
    @Option(help: ArgumentHelp("The CA certificate peers must be signed by (PEM).", valueName: "file"))
    var ca: String?

    func validate() throws {
        let given = [cert, key, ca].compactMap { $0 }.count
        if given != 0 && given != 3 {
            throw ValidationError("--cert, --key and --ca go together: give all three, or none to use the development CA")
        }
    }

    func configuration(state: StateDirectory, peerName: String, logger: Logger) throws -> TLSConfiguration {
        guard let cert, let key, let ca else {
            return try state.developmentTLS(peerName: peerName, logger: logger)
        }
        for (flag, path) in [("--cert", cert), ("--key", key), ("--ca", ca)]
        where !FileManager.default.isReadableFile(atPath: path) {
            throw TransportError.tlsConfiguration("cannot read \(flag) \(path)")
        }
        return TLSConfiguration(caFile: ca, certificateFile: cert, keyFile: key)
    }
}
