@testable import MemReplica
import Foundation
import Logging
import Testing

@Suite("State folder and development PKI")
struct StateDirectoryTests {
    @Test("flag, then MEMREPLICA_STATE_DIR, then XDG_STATE_HOME, then ~/.local/state")
    func resolutionOrder() {
        let env = ["MEMREPLICA_STATE_DIR": "/e", "XDG_STATE_HOME": "/x", "HOME": "/h"]
        #expect(StateDirectory(explicit: "/f", environment: env).path == "/f")
        #expect(StateDirectory(explicit: nil, environment: env).path == "/e")
        #expect(StateDirectory(explicit: nil, environment: ["XDG_STATE_HOME": "/x", "HOME": "/h"]).path == "/x/memreplica")
        #expect(StateDirectory(explicit: nil, environment: ["XDG_STATE_HOME": "rel", "HOME": "/h"]).path
                == "/h/.local/state/memreplica")
        #expect(StateDirectory(explicit: nil, environment: ["HOME": "/h"]).controlSocketPath
                == "/h/.local/state/memreplica/control.sock")
    }

    @Test("the development CA is made once, 0700/0600, and shared by every name")
    func developmentPKI() throws {
        let root = NSTemporaryDirectory() + "mr-state-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = StateDirectory(explicit: root + "/state", environment: [:])
        let logger = Logger(label: "test")
        let peer = try state.developmentTLS(peerName: "peer-a", logger: logger)
        let ca = try String(contentsOfFile: peer.caFile, encoding: .utf8)
        let again = try state.developmentTLS(peerName: "peer-a", logger: logger)
        let client = try state.developmentTLS(peerName: "peer-a-client", logger: logger)
        #expect(again == peer)
        #expect(client.caFile == peer.caFile)
        #expect(try String(contentsOfFile: client.caFile, encoding: .utf8) == ca)
        let fm = FileManager.default
        #expect(try fm.attributesOfItem(atPath: state.path)[.posixPermissions] as? Int == 0o700)
        #expect(try fm.attributesOfItem(atPath: state.developmentPKIPath)[.posixPermissions] as? Int == 0o700)
        #expect(try fm.attributesOfItem(atPath: try #require(peer.keyFile))[.posixPermissions] as? Int == 0o600)
    }

    @Test("hostnames become valid certificate names")
    func peerNames() {
        #expect(PeerName.sanitized("db-1.example.com") == "db-1")
        #expect(PeerName.sanitized("weird host!") == "weird-host-")
        #expect(PeerName.sanitized("") == "memreplica-peer")
        #expect(CertificateAuthority.isValidName(PeerName.clientDefault))
    }
}
