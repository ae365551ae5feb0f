import MemReplica
import MemReplicaQUIC
import MemReplicaTransportCore
import ArgumentParser
import Foundation
import Logging

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

    /// The three files, when given (validate() refuses one or two).
    var files: PeerConfiguration.TLSFiles? {
        guard let cert, let key, let ca else { return nil }
        return PeerConfiguration.TLSFiles(cert: cert, key: key, ca: ca)
    }

    func configuration(state: StateDirectory, peerName: String, logger: Logger) throws -> TLSConfiguration {
        try Self.configuration(files, state: state, peerName: peerName, logger: logger)
    }

    /// `files`, checked readable, or the development CA when nil. `names`
    /// are what errors call the three files (the flags, or a config file's keys).
    static func configuration(_ files: PeerConfiguration.TLSFiles?, names: [String] = ["--cert", "--key", "--ca"],
                              state: StateDirectory, peerName: String, logger: Logger) throws -> TLSConfiguration {
        guard let files else {
            return try state.developmentTLS(peerName: peerName, logger: logger)
        }
        for (name, path) in zip(names, [files.cert, files.key, files.ca])
        where !FileManager.default.isReadableFile(atPath: path) {
            throw TransportError.tlsConfiguration("cannot read \(name) \(path)")
        }
        return TLSConfiguration(caFile: files.ca, certificateFile: files.cert, keyFile: files.key)
    }
}
