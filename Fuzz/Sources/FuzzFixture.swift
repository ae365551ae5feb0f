@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Foundation
import Logging

/// What the control and HTTP/3 targets answer from: a peer service on
/// loopback (development certificates in a scratch folder) exporting two
/// regions, "open" and "closed" (allow=reader), plus a lazy mirror of a
/// region of its own ("lazy"), made once per process.
struct FuzzFixture: Sendable {
    static let chunkSize = 4096
    let service: PeerService
    let open: Region
    let closed: Region
    let lazy: PostCopyMirror
    let logger: Logger

    static let shared: FuzzFixture = {
        do {
            return try FuzzFixture()
        } catch {
            fuzzFailure("cannot set up the fuzz fixture: \(error)")
        }
    }()

    private init() throws {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        self.logger = logger
        let directory = NSTemporaryDirectory() + "memreplica-fuzz-\(getpid())"
        let files = try CertificateAuthority.initialize(directory: directory, peers: ["fuzz"])
        var configuration = QUICConfiguration()
        configuration.acceptsConnections = true
        let endpoint = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: files[0].tls,
                                        configuration: configuration, logger: logger)
        open = try Region(name: "open", backing: .memory, size: 10 * Self.chunkSize + 100, chunkSize: Self.chunkSize)
        fillPattern(open.bytes, seed: 1)
        closed = try Region(name: "closed", backing: .memory, size: 3 * Self.chunkSize, chunkSize: Self.chunkSize)
        fillPattern(closed.bytes, seed: 2)
        let exports = RegionExports([.init(region: open), .init(region: closed, allowedPeers: ["reader"])], logger: logger)
        service = PeerService(endpoint: endpoint, exports: exports, logger: logger)
        var options = PostCopyMirror.Options()
        options.backgroundPull = false
        lazy = try PostCopyMirror(region: Region(name: "lazy", backing: .memory, size: 8 * Self.chunkSize,
                                                 chunkSize: Self.chunkSize), options: options)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Runs `body` on the concurrency pool and waits for it: libFuzzer calls
/// targets synchronously, the responder is async.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> T {
    let done = DispatchSemaphore(value: 0)
    let result = Locked<T?>(nil)
    Task {
        let value = await body()
        result.withLock { $0 = value }
        done.signal()
    }
    done.wait()
    return result.withLock { $0! }
}

/// Open descriptors of this process (entries of /proc/self/fd, less the
/// one the listing itself holds).
func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { fuzzFailure("cannot list /proc/self/fd") }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3  // ".", ".." and the listing's own descriptor
}
