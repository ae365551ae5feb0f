@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import Crypto
import Foundation

func regionSHA(_ r: Region) -> String {
    SHA256.hash(data: UnsafeRawBufferPointer(r.bytes)).map { String(format: "%02x", $0) }.joined()
}

/// Waits until `mirror` holds the same bytes as `primary` (SHA-256).
func waitConverged(_ primary: Region, _ mirror: Region, within seconds: Double) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while regionSHA(primary) != regionSHA(mirror) {
        guard ContinuousClock.now < deadline else {
            throw TimeoutError(what: "replica of '\(primary.name)' converging", seconds: seconds)
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// Waits until `mirror`'s initial sync is complete (SYNCED applied).
func waitSynced(_ mirror: RegionMirror, within seconds: Double) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !mirror.initialSyncComplete {
        guard ContinuousClock.now < deadline else { throw TimeoutError(what: "initial sync", seconds: seconds) }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// An exporting server endpoint and a client connected to it.
struct ReplicationPair {
    let pki: TestPKI
    let pair: EndpointPair
    let client: QUICConnection
    let serving: Task<Void, Never>

    init(exports: RegionExports) async throws {
        pki = try TestPKI()
        pair = try EndpointPair(pki: pki)
        let (client, server) = try await pair.connect()
        self.client = client
        serving = Task {
            await withDiscardingTaskGroup { group in
                while let stream = try? await server.acceptStream() {
                    group.addTask { await exports.serve(stream, peer: server.peerIdentity, offered: .all) }
                }
            }
        }
    }

    /// Closes both ends and waits until every stream the server served has
    /// ended, so nothing of this pair outlives the test.
    func close() async {
        await pair.close()
        _ = await serving.value
        pki.remove()
    }
}

/// `ReplicationPair` over any transport: an exporting server of `kind`
/// and a client connected to it.
struct TransportReplicationPair {
    let pki: TestPKI
    let pair: TransportPair
    let client: any TransportConnection
    let serving: Task<Void, Never>

    /// `offered`: what the mirror's HELLO would have offered (these pairs
    /// send none; PAGES frames by default, as a peer's mirror offers them).
    init(_ kind: TransportKind, exports: RegionExports, serverConfig: QUICConfiguration = quicConfig(server: true),
         offered: WireCapabilities = .all) async throws {
        pki = try TestPKI()
        pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig)
        let (client, server) = try await pair.connect()
        self.client = client
        serving = Task {
            await withDiscardingTaskGroup { group in
                while let stream = try? await server.acceptStream() {
                    group.addTask { await exports.serve(stream, peer: server.peerIdentity, offered: offered) }
                }
            }
        }
    }

    /// Closes both ends and waits until every stream the server served has
    /// ended, so nothing of this pair outlives the test.
    func close() async {
        await pair.close()
        _ = await serving.value
        pki.remove()
    }
}
