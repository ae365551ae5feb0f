@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Testing

@Suite("Peer processes over TLS/TCP", .serialized)
struct PeerTransportProcessTests {
    @Test("peer --transport: a replica peer mirrors an exported region over TCP and ends identical",
          arguments: [TransportKind.tcp, .tcpPerRegion])
    func mirrorOverTCP(_ kind: TransportKind) async throws {
        let root = NSTemporaryDirectory() + "mr-tcp-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let primaryPath = root + "/primary.bin", replicaPath = root + "/replica.bin"
        let content = patternBytes(count: 32 << 20, seed: 5)
        try Data(content).write(to: URL(fileURLWithPath: primaryPath))
        let exe = try builtExecutable()
        let port = unusedTCPPort()
        let primary = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(port)", "--transport", kind.rawValue,
                                             "--state-dir", root, "--name", "primary", "--control", root + "/p.sock",
                                             "--export", "r=\(primaryPath)", "--log-level", "warning"])
        defer { primary.terminate(grace: .milliseconds(200)) }
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: root + "/dev-pki/primary.pem") {
            try #require(ContinuousClock.now < deadline, "the primary never started")
            try await Task.sleep(for: .milliseconds(50))
        }
        let replica = try ChildProcess(exe, ["peer", "--listen", "127.0.0.1:\(unusedTCPPort())", "--transport", kind.rawValue,
                                             "--state-dir", root, "--name", "replica", "--control", root + "/r.sock",
                                             "--mirror", "r@127.0.0.1:\(port)=\(replicaPath)", "--log-level", "warning"])
        defer { replica.terminate(grace: .milliseconds(200)) }
        let want = sha256Hex(content)
        while (try? Data(contentsOf: URL(fileURLWithPath: replicaPath))).map({ sha256Hex(Array($0)) }) != want {
            try #require(ContinuousClock.now < deadline, "the replica never converged over \(kind)")
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}
