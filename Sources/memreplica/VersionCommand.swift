import QuicShim
import ArgumentParser

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print the versions of memreplica and of the QUIC and TLS libraries it runs on.")

    func run() throws {
        // The libraries loaded at run time, which is what matters for bugs.
        let ngtcp2 = ngtcp2_version(0).map { String(cString: $0.pointee.version_str) } ?? "unknown"
        let gnutls = gnutls_check_version(nil).map { String(cString: $0) } ?? "unknown"
        print("memreplica \(memReplicaVersion)")
        print("ngtcp2     \(ngtcp2)")
        print("GnuTLS     \(gnutls)")
    }
}
