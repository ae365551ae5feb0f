import ArgumentParser
import MemReplica

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print the versions of memreplica and of the QUIC and TLS libraries it runs on.")

    func run() throws {
        print("memreplica \(memReplicaVersion)")
        print("ngtcp2     \(QUICLibraryVersions.ngtcp2)")
        print("GnuTLS     \(QUICLibraryVersions.gnuTLS)")
    }
}
