@testable import MemReplica
@testable import MemReplicaSystem
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

private let page = 4096

/// Changes one byte in each of `pages` (so hashing sees it too).
private func touch(_ memory: UnsafeMutableRawBufferPointer, pages: some Sequence<Int>, salt: Int = 0) {
    for p in pages {
        let offset = p * page + (p &* 131 &+ salt) % page
        memory[offset] = memory[offset] &+ 1
    }
}

/// `count` distinct pages out of `total`, ascending.
private func randomPages(_ count: Int, of total: Int, using rng: inout some RandomNumberGenerator) -> [Int] {
    if count * 4 >= total { return Array((0..<total).shuffled(using: &rng).prefix(count)).sorted() }
    var picked = Set<Int>()
    while picked.count < count { picked.insert(Int.random(in: 0..<total, using: &rng)) }
    return picked.sorted()
}

private func chunks(ofPages pages: [Int], chunkSize: Int) -> [Int] {
    Array(Set(pages.map { $0 * page / chunkSize })).sorted()
}

/// Checks that `reported` is exactly `expected` (ascending, each once),
/// naming a few differences rather than printing 100 000 numbers.
private func expectExact(_ reported: [Int], _ expected: [Int], _ what: String,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    guard reported != expected else { return }
    let missed = Set(expected).subtracting(reported).sorted()
    let extra = Set(reported).subtracting(expected).sorted()
    Issue.record("""
        \(what): \(reported.count) reported, \(expected.count) expected; \(missed.count) missed \(missed.prefix(5)), \
        \(extra.count) not written \(extra.prefix(5))\(missed.isEmpty && extra.isEmpty ? ", order or repeats differ" : "")
        """, sourceLocation: sourceLocation)
}

private func quietLogger() -> Logger {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}

/// A tracker whose scans fail, to see the shared feed fall back.
private final class FailingTracker: DirtyTracker, @unchecked Sendable {
    struct Broken: Error {}
    var kind: DirtyTrackerKind { .writeProtect }
    var statistics: DirtyScanStatistics { DirtyScanStatistics() }
    func changedChunks() throws -> [Int] { throw Broken() }
}

@Suite("Dirty tracking: userfaultfd write-protection and the hash fallback", .serialized)
struct DirtyTrackerTests {
    @Test("N random pages written per round are reported exactly, over several rounds; the hash scanner agrees",
          arguments: [1, 10, 1000, 100_000])
    func exactPages(n: Int) throws {
        // 100 000 pages need a big region: 512 MiB is 131 072 pages.
        let size = n >= 10_000 ? 512 << 20 : 64 << 20
        let chunkSize = 65536
        let region = try Region(name: "exact", backing: .memory, size: size, chunkSize: chunkSize)
        let tracker = try WriteProtectTracker(region: region)
        let hasher = ChunkHashScanner(region: region)
        #expect(try tracker.changedPages().isEmpty)
        var rng = SystemRandomNumberGenerator()
        let total = size / page
        for round in 1...4 {
            let pages = randomPages(n, of: total, using: &rng)
            touch(region.bytes, pages: pages, salt: round)
            if round % 2 == 1 {
                expectExact(try tracker.changedPages(), pages, "pages, round \(round)")
            } else {
                // Chunk-granular: what replication uses.
                expectExact(try tracker.changedChunks(), chunks(ofPages: pages, chunkSize: chunkSize), "chunks, round \(round)")
            }
            expectExact(try hasher.changedChunks(), chunks(ofPages: pages, chunkSize: chunkSize), "hash scanner, round \(round)")
            // Nothing written since: nothing reported.
            expectExact(try tracker.changedPages(), [], "no writes, round \(round)")
        }
        #expect(tracker.statistics.scans == 9)
        #expect(tracker.statistics.lastDuration > .zero)
    }

    @Test("a page written twice is reported once, reads are not writes, a page written again is reported again")
    func onceAndAgain() throws {
        let region = try Region(name: "twice", backing: .memory, size: 64 * page + 100, chunkSize: 16384)
        let tracker = try WriteProtectTracker(region: region)
        let hasher = ChunkHashScanner(region: region)
        touch(region.bytes, pages: [5, 5, 9])
        var sum = 0
        for p in [1, 2, 30, 63] { sum &+= Int(region.bytes[p * page]) }
        #expect(try tracker.changedPages() == [5, 9])
        #expect(try tracker.changedPages().isEmpty)
        touch(region.bytes, pages: [5])
        region.bytes[64 * page + 50] &+= 1    // the partial last page
        #expect(try tracker.changedChunks() == [1, 16])
        #expect(try hasher.changedChunks() == [1, 2, 16])
        #expect(try tracker.changedChunks().isEmpty)
        // The reads saw the zeros of pages never written (and kept the
        // compiler from dropping them).
        #expect(sum == 0)
    }

    @Test("anonymous private memory is tracked exactly too, including pages never touched before")
    func anonymous() throws {
        let size = 16 << 20
        let raw = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let raw, raw != MAP_FAILED else { Issue.record("mmap failed"); return }
        defer { munmap(raw, size) }
        let memory = UnsafeMutableRawBufferPointer(start: raw, count: size)
        // Half populated before arming, half not.
        memset(raw, 1, size / 2)
        var rng = SystemRandomNumberGenerator()
        do {
            let tracker = try WriteProtectTracker(memory: memory, chunkSize: 65536)
            #expect(try tracker.changedPages().isEmpty)
            for round in 1...3 {
                let pages = randomPages(500, of: size / page, using: &rng)
                touch(memory, pages: pages, salt: round)
                expectExact(try tracker.changedPages(), pages, "round \(round)")
            }
        }
    }

    @Test("writes racing with scans: nothing lost, nothing unwritten; a write that raced a scan may also be reported early")
    func racingWriter() async throws {
        let region = try Region(name: "race", backing: .memory, size: 32 << 20, chunkSize: 65536)
        let tracker = try WriteProtectTracker(region: region)
        var rng = SystemRandomNumberGenerator()
        let pages = randomPages(4000, of: region.geometry.size / page, using: &rng).shuffled()
        let done = Locked(false)
        let writer = Thread {
            for (i, p) in pages.enumerated() {
                touch(region.bytes, pages: [p])
                if i % 64 == 0 { usleep(50) }
            }
            done.withLock { $0 = true }
        }
        writer.start()
        var scans: [[Int]] = []
        while !done.withLock({ $0 }) { scans.append(try tracker.changedPages()) }
        scans.append(try tracker.changedPages())
        // Each page was written once. The kernel counts a page written when
        // it resolves the write fault, before the store retires: a scan in
        // between reports it and protects it again, the store faults once
        // more, and a later scan (the next one, unless the writer was
        // preempted meanwhile) reports it again. Harmless (the chunk is
        // sent twice), never a loss.
        var reportedIn: [Int: [Int]] = [:]
        for (n, scan) in scans.enumerated() { for p in scan { reportedIn[p, default: []].append(n) } }
        expectExact(reportedIn.keys.sorted(), pages.sorted(), "pages reported over all rounds")
        let repeated = reportedIn.values.filter { $0.count > 1 }
        #expect(repeated.count < pages.count / 20, "\(repeated.count) pages reported more than once")
        #expect(scans.count > 1)
    }

    @Test("selection: a memfd gets the userfaultfd tracker, a file the hash scanner, a busy range falls back with the errno")
    func selection() throws {
        let memfd = try Region(name: "m", backing: .memory, size: 1 << 20, chunkSize: 65536)
        let chosen = DirtyTrackerSelection.select(for: memfd)
        #expect(chosen.kind == .writeProtect)
        #expect(chosen.reason.contains("userfaultfd"))
        // The range is registered: a second tracker on it is refused.
        let second = withExtendedLifetime(chosen) { DirtyTrackerSelection.select(for: memfd) }
        #expect(second.kind == .hashScan)
        #expect(second.reason.contains("UFFDIO_REGISTER"), "\(second.reason)")
        #expect(second.reason.contains("busy"), "\(second.reason)")

        let path = "/dev/shm/mr-dirty-\(UUID().uuidString)"
        defer { unlink(path) }
        let file = try Region(name: "f", backing: .file(path: path), size: 1 << 20, chunkSize: 65536)
        let forFile = DirtyTrackerSelection.select(for: file)
        #expect(forFile.kind == .hashScan)
        #expect(forFile.reason.contains("file-backed"))
        #expect(forFile.reason.contains(path))
        // Why: another writer of the file (here pwrite) never faults our mapping.
        let writer = open(path, O_WRONLY | O_CLOEXEC)
        defer { close(writer) }
        #expect(pwrite(writer, [UInt8(7)], 1, 4096 * 3) == 1)
        #expect(try forFile.tracker.changedChunks() == [0])
    }

    @Test("one tracker per region: every subscription sees every change, the last one disarms it")
    func sharedFeed() throws {
        let region = try Region(name: "shared", backing: .memory, size: 4 << 20, chunkSize: 65536)
        let a = RegionChangeFeed.subscribe(to: region, logger: quietLogger())
        let b = RegionChangeFeed.subscribe(to: region, logger: quietLogger())
        #expect(a.feed === b.feed)
        #expect(a.status.kind == .writeProtect)
        #expect(a.status.subscribers == 2)
        touch(region.bytes, pages: [0, 17, 18])   // chunks 0 and 1
        #expect(a.changedChunks() == [0, 1])
        touch(region.bytes, pages: [40])          // chunk 2
        #expect(b.changedChunks() == [0, 1, 2])
        #expect(a.changedChunks() == [2])
        #expect(a.changedChunks().isEmpty)
        #expect(b.changedChunks().isEmpty)
        a.cancel()
        touch(region.bytes, pages: [63])
        #expect(b.changedChunks() == [3])
        #expect(RegionChangeFeed.status(of: region)?.subscribers == 1)
        b.cancel()
        #expect(RegionChangeFeed.status(of: region) == nil)
        // Disarmed: the range can be registered again.
        let c = RegionChangeFeed.subscribe(to: region, logger: quietLogger())
        #expect(c.status.kind == .writeProtect)
        #expect(c.feed !== a.feed)
        c.cancel()
    }

    @Test("a tracker whose scan fails is replaced by hashing, and every chunk is reported to every subscriber once")
    func failingScanFallsBack() throws {
        let region = try Region(name: "failing", backing: .memory, size: 8 * 65536, chunkSize: 65536)
        let select = { DirtyTrackerSelection(tracker: FailingTracker(), reason: "test") }
        let a = RegionChangeFeed.subscribe(to: region, logger: quietLogger(), select: select)
        let b = RegionChangeFeed.subscribe(to: region, logger: quietLogger(), select: select)
        defer { a.cancel(); b.cancel() }
        #expect(a.changedChunks() == Array(0..<8))
        #expect(a.status.kind == .hashScan)
        #expect(a.status.reason.contains("failed"))
        touch(region.bytes, pages: [16 * 5])
        #expect(b.changedChunks() == Array(0..<8))
        #expect(a.changedChunks() == [5])
        #expect(a.changedChunks().isEmpty)
    }
}
