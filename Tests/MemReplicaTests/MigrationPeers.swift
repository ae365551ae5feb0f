@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Crypto
import Foundation
import Testing

/// Two running peers, A exporting a file-backed region and B mirroring it
/// eagerly, each with a state folder of its own.
struct MigrationPeers {
    static let size = 8 << 20
    let root: String
    let pki: TestPKI
    let a: PeerService
    let b: PeerService
    let serving: [Task<Void, Never>]
    let pathA: String
    let pathB: String
    var addressA: String { "127.0.0.1:\(a.endpoint.localAddress.port)" }
    var addressB: String { "127.0.0.1:\(b.endpoint.localAddress.port)" }

    /// `mirrored` false: B does not mirror the region and takes migrations
    /// into `accepted` (default `root/accepted`). `mirrorFolder`: where B's
    /// copy lives (tmpfs by default; post-copy needs it).
    static func start(mirrorAllow: Set<String>? = nil, mirrored: Bool = true, accepted: String? = nil,
                      mirrorFolder: String = "/dev/shm",
                      postCopy: PostCopyMirror.Options = .init(), alongside: String? = nil) async throws -> MigrationPeers {
        let root = NSTemporaryDirectory() + "mr-migrate-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let pki = try TestPKI(peers: ("peer-a", "peer-b"))
        let pathA = "/dev/shm/\(root.split(separator: "/").last!)-a"
        let pathB = "\(mirrorFolder)/\(root.split(separator: "/").last!)-b"
        let region = try Region(name: "moving", backing: .file(path: pathA), size: size, chunkSize: 65536)
        fillPattern(region.bytes, seed: 41)
        let storeA = RegionIdentityStore(stateDirectory: StateDirectory(explicit: root + "/a"))
        let storeB = RegionIdentityStore(stateDirectory: StateDirectory(explicit: root + "/b"))
        let identity = try storeA.advance(region: "moving", path: pathA)
        let endpointA = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                         configuration: quicConfig(server: true), logger: silentLogger())
        let endpointB = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.client.tls,
                                         configuration: quicConfig(server: true), logger: silentLogger())
        // `alongside`: a second region A exports and B mirrors, which stays put.
        var others: [RegionExports.Export] = []
        if let alongside {
            let other = try Region(name: "staying", backing: .file(path: "\(pathA)-staying"), size: 1 << 20, chunkSize: 65536)
            fillPattern(other.bytes, seed: 42)
            others.append(.init(region: other, identity: try storeA.advance(region: "staying", path: "\(pathA)-staying")))
            _ = alongside
        }
        let exports = RegionExports([.init(region: region, allowedPeers: mirrorAllow, identity: identity)] + others,
                                    scanInterval: .milliseconds(10), logger: silentLogger())
        let a = PeerService(endpoint: endpointA, exports: exports, identities: storeA, logger: silentLogger())
        let spec = try MirrorSpec(parsing: "moving@127.0.0.1:\(endpointA.localAddress.port)=\(pathB)")
        let runner = MirrorRunner(spec: spec, endpoint: endpointB, logger: silentLogger())
        let otherRunners = try others.isEmpty ? [] : [MirrorRunner(spec: MirrorSpec(
            parsing: "staying@127.0.0.1:\(endpointA.localAddress.port)=\(alongside!)"), endpoint: endpointB, logger: silentLogger())]
        let b = PeerService(endpoint: endpointB, exports: RegionExports([], scanInterval: .milliseconds(10), logger: silentLogger()),
                            mirrors: (mirrored ? [runner] : []) + otherRunners, identities: storeB,
                            acceptMigrationsInto: mirrored ? nil : accepted ?? root + "/accepted", postCopyOptions: postCopy,
                            logger: silentLogger())
        let serving = [Task { await a.run() }, Task { await b.run() }]
        if mirrored { try await pollUntil("B's mirror to sync", seconds: 30) { runner.synced } }
        for other in otherRunners { try await pollUntil("B's second mirror to sync", seconds: 30) { other.synced } }
        return MigrationPeers(root: root, pki: pki, a: a, b: b, serving: serving, pathA: pathA, pathB: pathB)
    }

    func stop() async {
        await a.endpoint.close()
        await b.endpoint.close()
        for task in serving { await task.value }
        removeSharedMemoryFiles()
        pki.remove()
        try? FileManager.default.removeItem(atPath: root)
    }

    /// For a `defer`, which cannot wait: the tmpfs files go now (the peers'
    /// mappings outlive the names), the rest in a task. The process may end
    /// before that task runs, and a left-over file would hold 8 MiB of
    /// /dev/shm until the next boot.
    func stopSoon() {
        removeSharedMemoryFiles()
        Task { await stop() }
    }

    private func removeSharedMemoryFiles() {
        unlink(pathA)
        unlink(pathB)
        unlink("\(pathA)-staying")
    }
}

/// A writer in the test's process that stores 8-byte values at random
/// offsets until paused; pausing waits until it has stopped.
final class InProcessWriter: Sendable {
    private struct State {
        var region: Region?
        var pauseRequested = false
        var paused = false
        var stopped = false
        var stores = 0
    }
    private let state = Locked(State())

    /// `cycle`: stores only during the first `burst` seconds of every
    /// `period` seconds from `began`.
    let cycle: (period: Double, burst: Double)?
    let began = ContinuousClock.now

    /// Whether a cyclic writer stores at `instant`.
    func bursting(at instant: ContinuousClock.Instant = .now) -> Bool {
        guard let cycle else { return true }
        return began.duration(to: instant).seconds.truncatingRemainder(dividingBy: cycle.period) < cycle.burst
    }

    init(_ region: Region, storesPerMillisecond: Int = 4, cycle: (period: Double, burst: Double)? = nil) {
        self.cycle = cycle
        state.withLock { $0.region = region }
        let state = self.state
        let began = self.began
        let thread = Thread {
            var rng = SystemRandomNumberGenerator()
            while true {
                if let cycle, began.duration(to: .now).seconds.truncatingRemainder(dividingBy: cycle.period) >= cycle.burst {
                    if state.withLock({ s in
                        if s.pauseRequested { s.paused = true }
                        return s.stopped
                    }) { return }
                    usleep(1000)
                    continue
                }
                let (target, stop) = state.withLock { s -> (Region?, Bool) in
                    if s.pauseRequested { s.paused = true }
                    return (s.pauseRequested ? nil : s.region, s.stopped)
                }
                if stop { return }
                if let target {
                    for _ in 0..<storesPerMillisecond {
                        let offset = Int.random(in: 0..<(target.geometry.size / 8), using: &rng) * 8
                        target.bytes.storeBytes(of: rng.next() as UInt64, toByteOffset: offset, as: UInt64.self)
                    }
                    state.withLock { $0.stores += storesPerMillisecond }
                }
                usleep(1000)
            }
        }
        thread.start()
    }

    var stores: Int { state.withLock { $0.stores } }

    /// `MigrationFreeze` for this writer: after a hand-over it writes to
    /// `next` (the region at its new owner), else where it wrote before.
    func freeze(next: @escaping @Sendable () -> Region?) -> MigrationFreeze {
        MigrationFreeze(pause: { [state] in
            state.withLock { $0.pauseRequested = true; $0.paused = false }
            while !state.withLock({ $0.paused }) { try? await Task.sleep(for: .microseconds(100)) }
        }, resume: { [state] handedOver in
            state.withLock { s in
                if handedOver { s.region = next() }
                s.pauseRequested = false
            }
        })
    }

    func stop() { state.withLock { $0.stopped = true } }
}

func sha(_ region: Region) -> String {
    SHA256.hash(data: UnsafeRawBufferPointer(region.bytes)).map { String(format: "%02x", $0) }.joined()
}
