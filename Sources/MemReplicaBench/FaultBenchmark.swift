import MemReplica
import MemReplicaTransportCore
import MemReplicaSystem
import Foundation
import SystemPackage
import Logging

/// `memreplica bench faults`: what a first touch costs on a post-copy
/// replica, over QUIC on loopback, in one run:
/// - idle: a thread touches one missing page at a time (4 KiB chunks, no
///   background pull) and times each load from issue to return: the fault
///   event, READ, DATA, UFFDIO_COPY and the wake-up;
/// - attached: the same through a second mapping of the replica's file
///   registered on a userfaultfd of its own and attached to the mirror, as
///   an application process attaches (the page lands in the page cache
///   through the peer's mapping; the attached mapping is woken to it);
/// - under bulk: the same while an eager initial sync of another region
///   runs on the same connection: the head-of-line case. Fault reads have
///   a stream of their own, so they should not wait behind the bulk bytes.
/// - floor: the same touches on a bare userfaultfd mapping whose handler
///   asks a second process over loopback UDP for each page
///   (`BareFaultFloor`), first, in the same run.
/// `Report.meetsIdleTarget` checks the design target against the floor:
/// idle p50 ≤ 1.5× the floor's, p99 ≤ 3× (bench/RESULTS.md says where
/// each target came from); `meetsBulkTarget` p99 ≤ 1 ms under bulk.
public struct FaultBenchmark {
    public struct Options: Sendable {
        public var regionBytes = 256 << 20
        public var chunkSize = 4096
        /// Faults timed in each phase.
        public var faults = 2000
        public var bulkBytes = 1 << 30
        public init() {}
    }

    public struct Latency: Codable, Sendable {
        public var samples: Int
        public var p50Microseconds: Double
        public var p90Microseconds: Double
        public var p99Microseconds: Double
        public var p999Microseconds: Double
        public var maxMicroseconds: Double

        init(_ nanoseconds: [UInt64]) {
            let sorted = nanoseconds.sorted()
            func pct(_ p: Double) -> Double {
                sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
            }
            samples = sorted.count
            p50Microseconds = pct(0.5); p90Microseconds = pct(0.9); p99Microseconds = pct(0.99)
            p999Microseconds = pct(0.999); maxMicroseconds = Double(sorted.last ?? 0) / 1000
        }
    }

    public struct Report: Codable, Sendable {
        public var regionBytes: Int
        public var chunkSize: Int
        /// The bare userfaultfd + UDP fault, same pages, same run.
        public var floor: Latency
        public var idle: Latency
        public var attached: Latency
        public var underBulk: Latency
        public var bulkBytes: Int
        /// The bulk sync was still running when the last fault was timed.
        public var bulkRanThroughout: Bool
        public var bulkChunksAtEnd: Int
        /// Idle over the floor, p50 and p99.
        public var idleP50OverFloor: Double
        public var idleP99OverFloor: Double
        public var meetsIdleTarget: Bool
        public var meetsBulkTarget: Bool
    }

    public let options: Options
    let peers: BenchPeers
    let log: @Sendable (String) -> Void

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    public func run() async throws -> Report {
        var logger = Logger(label: "memreplica.bench")
        logger.logLevel = .warning
        let primary = try Region(name: "faults", backing: .memory, size: options.regionBytes, chunkSize: options.chunkSize)
        fillPattern(primary.bytes, seed: 21)
        let bulkPrimary = try Region(name: "bulk", backing: .memory, size: options.bulkBytes, chunkSize: 64 << 10)
        fillPattern(bulkPrimary.bytes, seed: 22)
        let exports = RegionExports([.init(region: primary), .init(region: bulkPrimary)], scanInterval: .seconds(3600),
                                    logger: logger)
        let (server, client, conn, serving) = try await peers.connectServing(exports)
        defer { serving.cancel() }

        // A file in /dev/shm, not a memfd: the attached phase maps it again.
        let replicaPath = "/dev/shm/memreplica-bench-faults-\(getpid())"
        defer { unlink(replicaPath) }
        let replica = try Region(name: "faults", backing: .file(path: replicaPath), size: options.regionBytes,
                                 chunkSize: options.chunkSize, allocation: .sparse)
        var lazyOptions = PostCopyMirror.Options()
        lazyOptions.backgroundPull = false
        let mirror = try PostCopyMirror(region: replica, options: lazyOptions)
        defer { mirror.stop() }
        let following = Task { try await mirror.run(over: conn) }
        defer { following.cancel() }
        while !mirror.progress.subscribed { try await Task.sleep(for: .milliseconds(1)) }

        // Pages in random order; each phase touches pages nobody touched.
        let pages = options.regionBytes / Int(getpagesize())
        var order = Array(0..<pages)
        order.shuffle()
        let count = min(options.faults, pages / 3)
        let floorPeer = try PageServerProcess(serving: UnsafeRawBufferPointer(primary.bytes))
        defer { floorPeer.stop() }
        let floor = Latency(try await BareFaultFloor.measure(primary: UnsafeRawBufferPointer(primary.bytes),
                                                             pages: Array(order[0..<count]), server: floorPeer))
        log("floor (bare userfaultfd, a second process over UDP): \(count) faults, p50 \(String(format: "%.1f", floor.p50Microseconds)) µs, p99 \(String(format: "%.1f", floor.p99Microseconds)) µs")
        let idle = try await timeTouches(replica.bytes, primary, pages: Array(order[0..<count]))
        log("idle: \(count) faults, p50 \(String(format: "%.1f", idle.p50Microseconds)) µs, p99 \(String(format: "%.1f", idle.p99Microseconds)) µs")

        let application = try AttachedMapping(path: replicaPath, size: options.regionBytes)
        defer { application.unmap() }
        let detach = try mirror.attachClient(userfaultfd: try application.handOverUserfaultfd(), base: application.base,
                                             length: application.length)
        defer { detach() }
        let attached = try await timeTouches(application.bytes, primary, pages: Array(order[count..<(2 * count)]))
        log("attached mapping: \(count) faults, p50 \(String(format: "%.1f", attached.p50Microseconds)) µs, p99 \(String(format: "%.1f", attached.p99Microseconds)) µs")

        let bulkReplica = try Region(name: "bulk", backing: .memory, size: options.bulkBytes, chunkSize: 64 << 10)
        let bulk = RegionMirror(region: bulkReplica, offersHeldChunks: false)
        let syncing = Task { try await bulk.run(over: conn) }
        defer { syncing.cancel() }
        // Let the bulk stream fill the path first.
        while bulk.currentProgress.chunksPresent < 64 { try await Task.sleep(for: .milliseconds(1)) }
        let underBulk = try await timeTouches(replica.bytes, primary, pages: Array(order[(2 * count)..<(3 * count)]))
        let atEnd = bulk.currentProgress
        log("under a bulk sync: \(count) faults, p50 \(String(format: "%.1f", underBulk.p50Microseconds)) µs, p99 \(String(format: "%.1f", underBulk.p99Microseconds)) µs; bulk \(atEnd.synced ? "had finished" : "still running") (\(atEnd.chunksPresent) chunks)")
        await client.close()
        await server.close()
        let p50Ratio = idle.p50Microseconds / max(floor.p50Microseconds, 0.001)
        let p99Ratio = idle.p99Microseconds / max(floor.p99Microseconds, 0.001)
        return Report(regionBytes: options.regionBytes, chunkSize: options.chunkSize, floor: floor, idle: idle,
                      attached: attached, underBulk: underBulk,
                      bulkBytes: options.bulkBytes, bulkRanThroughout: !atEnd.synced, bulkChunksAtEnd: atEnd.chunksPresent,
                      idleP50OverFloor: p50Ratio, idleP99OverFloor: p99Ratio,
                      meetsIdleTarget: p50Ratio <= 1.5 && p99Ratio <= 3,
                      meetsBulkTarget: underBulk.p99Microseconds <= 1000)
    }

    /// Touches each page once from a thread of its own (a fault sleeps in
    /// the kernel; the cooperative pool must stay free to serve it), timing
    /// each load, and checks every word read against the primary.
    private func timeTouches(_ replica: UnsafeMutableRawBufferPointer, _ primary: Region, pages: [Int]) async throws -> Latency {
        Latency(try await timeFirstTouches(of: UnsafeRawBufferPointer(replica), against: UnsafeRawBufferPointer(primary.bytes),
                                           pages: pages) {
            ReplicationError.violation(ProtocolViolation(.internalError, "page \($0) read wrong bytes"))
        })
    }
}

/// Loads one word of each page in `pages` of `mapping`, in order, on a
/// thread of its own (each may fault and sleep in the kernel; the
/// cooperative pool must stay free to serve it), and returns each load's
/// time in ns. A word that differs from `expected`'s at the same offset
/// ends it with `mismatch(page)`. The thread resumes the task when done: a
/// task polling for the result would wake every few ms and take a core
/// from the loops.
func timeFirstTouches(of mapping: UnsafeRawBufferPointer, against expected: UnsafeRawBufferPointer, pages: [Int],
                      mismatch: @escaping @Sendable (Int) -> any Error) async throws -> [UInt64] {
    // Addresses cross into the thread; the mappings outlive it.
    let base = UInt(bitPattern: mapping.baseAddress)
    let expectedBase = UInt(bitPattern: expected.baseAddress)
    return try await withCheckedThrowingContinuation { done in
        let page = Int(getpagesize())
        let thread = Thread {
            var samples: [UInt64] = []
            samples.reserveCapacity(pages.count)
            for p in pages {
                let offset = p * page
                let start = DispatchTime.now().uptimeNanoseconds
                let got = UnsafeRawPointer(bitPattern: base)!.load(fromByteOffset: offset, as: UInt64.self)
                samples.append(DispatchTime.now().uptimeNanoseconds - start)
                guard got == UnsafeRawPointer(bitPattern: expectedBase)!.load(fromByteOffset: offset, as: UInt64.self) else {
                    done.resume(throwing: mismatch(p))
                    return
                }
            }
            done.resume(returning: samples)
        }
        thread.name = "bench faults"
        thread.start()
    }
}

/// The bench's stand-in for an attached application: a second shared
/// mapping of the replica's file, registered for MISSING faults on a
/// userfaultfd of its own, as `AttachedRegion` does in another process.
private final class AttachedMapping: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    let length: Int
    private let userfaultfd: Int32
    var base: UInt64 { UInt64(UInt(bitPattern: bytes.baseAddress)) }

    init(path: String, size: Int) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw PostCopyError.userfaultfd(call: "open \(path)", errno: Errno(rawValue: errno)) }
        defer { close(fd) }
        let page = Int(getpagesize())
        length = (size + page - 1) / page * page
        guard let p = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw PostCopyError.userfaultfd(call: "mmap", errno: Errno(rawValue: errno))
        }
        bytes = UnsafeMutableRawBufferPointer(start: p, count: size)
        let uffd: UserFaultFD
        do {
            uffd = try UserFaultFD.open()
        } catch {
            munmap(p, size)
            throw PostCopyError.userfaultfd(call: "open", errno: error.syscall)
        }
        do {
            try uffd.handshake(requesting: .missingShmem)
            try uffd.registerMissing(p, length: length)
        } catch {
            try? uffd.close()
            munmap(p, size)
            throw PostCopyError.userfaultfd(call: "UFFDIO_REGISTER", errno: error)
        }
        userfaultfd = uffd.rawValue
    }

    /// A copy for the mirror (which closes it on detach); the application
    /// keeps its own, as a process passing it over SCM_RIGHTS does.
    func handOverUserfaultfd() throws -> Int32 {
        let copy = dup(userfaultfd)
        guard copy >= 0 else { throw PostCopyError.userfaultfd(call: "dup", errno: Errno(rawValue: errno)) }
        return copy
    }

    func unmap() {
        munmap(bytes.baseAddress, bytes.count)
        close(userfaultfd)
    }
}

