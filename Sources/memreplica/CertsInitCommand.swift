import MemReplica
import ArgumentParser
import Foundation

struct CertsInitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Make a CA and a certificate and key (ECDSA P-256) for each peer.",
        discussion: """
            An existing CA in DIR is reused, so peers can be added later. Keys are written 0600; \
            copy each peer's key only to that peer, and the CA key nowhere.
            """)

    @Option(help: ArgumentHelp("Folder for the CA and peer files.", valueName: "dir"))
    var dir: String

    @Option(name: .customLong("peer"), help: ArgumentHelp("A peer name (repeat for more peers).", valueName: "name"))
    var peers: [String] = []

    @Option(help: "Validity of the peer certificates, in days.")
    var days = 825

    @Flag(help: "Replace existing peer certificates and keys.")
    var force = false

    func validate() throws {
        if peers.isEmpty { throw ValidationError("name at least one peer with --peer NAME") }
        if days < 1 { throw ValidationError("--days must be at least 1") }
    }

    func run() throws {
        let layout = CertificateAuthority.Layout(directory: dir)
        let caExisted = FileManager.default.fileExists(atPath: layout.caCertificate)
        let files = try CertificateAuthority.initialize(directory: dir, peers: peers, validDays: days, force: force)
        print("CA        \(layout.caCertificate) (\(caExisted ? "existing, reused" : "created"))")
        print("CA key    \(layout.caKey) (mode 0600; keep it off the peers)")
        for peer in files {
            print("peer \(peer.name): certificate \(peer.certificate), key \(peer.key) (mode 0600)")
        }
        if let first = files.first {
            print("run it:   memreplica peer --cert \(first.certificate) --key \(first.key) --ca \(layout.caCertificate)")
        }
    }
}
