import MemReplicaSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Exact dirty tracking with userfaultfd write-protection (Linux ≥ 6.7).
///
/// Arming registers the memory with a userfaultfd in WP mode, with
/// `UFFD_FEATURE_WP_ASYNC`, and write-protects all of it. The first write
/// to a protected page then faults, and the kernel resolves the fault by
/// itself (no handler thread): it lifts the protection and the page counts
/// as written. A scan is one `PAGEMAP_SCAN` ioctl on /proc/self/pagemap
/// that returns the written pages as runs and write-protects them again,
/// atomically per page table entry. Every page written since the last
/// scan is reported once; none that was not. A write racing with a scan
/// is never lost, but may be reported early as well: the kernel counts the
/// page written when it resolves the write fault, before the store
/// retires; a scan in between reports it and protects it again, so the
/// store faults once more and a later scan reports it again, after it
/// landed (measured: ~0.2 % of pages written while scanning in a tight
/// loop; usually the next scan, later if the writer was preempted).
///
/// Measured on this kernel (6.18): memfd (shmem) pages that were never
/// populated are protected too (the kernel installs uffd-wp PTE markers
/// for shared memory whether or not `UFFD_FEATURE_WP_UNPOPULATED` is on),
/// so no prefaulting is needed; for anonymous memory WP_UNPOPULATED gives
/// the same, and it is requested whenever the kernel offers it. A written
/// page dropped from the page table before the scan (`MADV_DONTNEED`,
/// `MADV_PAGEOUT`) is still reported. (This machine has no swap: reclaim
/// of shmem pages to swap was not observed.)
///
/// What it sees: stores through this mapping from any thread, and kernel
/// copies into it (`read()` from a pipe was measured). What it cannot see:
/// writes that do not fault through this mapping — `pwrite()` and
/// `fallocate()` on the backing file and a `fork()`ed child's stores
/// (measured: not reported), another process's mapping of the file, and
/// (by design, not tested) device DMA into pages pinned before a scan.
/// Callers pick it only where those cannot happen (`DirtyTrackerSelection`).
///
/// A second registration of the same range, from any userfaultfd, fails
/// with EBUSY: one tracker per mapping (`RegionChangeFeed` shares it).
public final class WriteProtectTracker: DirtyTracker, @unchecked Sendable {
    /// Why arming or a scan failed: the step and its errno.
    public struct Failure: Error, CustomStringConvertible {
        public let step: String
        public let errno: Errno?
        public let detail: String?

        public var description: String {
            [step, errno.map { "\($0)" }, detail].compactMap { $0 }.joined(separator: ": ")
        }
    }

    public var kind: DirtyTrackerKind { .writeProtect }
    public private(set) var statistics = DirtyScanStatistics()
    public let pageSize: Int
    public let chunkSize: Int
    /// The uffd features the kernel granted.
    public let features: UInt64

    private let memory: UnsafeMutableRawBufferPointer
    /// `memory.count` rounded up to whole pages (what is registered).
    private let trackedLength: Int
    /// The address just past the tracked pages (checked not to overflow).
    private let trackedEnd: UInt64
    private let chunkCount: Int
    private let owner: AnyObject?
    private let uffd: UserFaultFD
    private let pagemap: FileDescriptor
    /// Tracks another process's mapping (`memory` is an address range in
    /// that process, never dereferenced here); its registration is not
    /// ours to undo.
    private let remote: Bool
    /// The scan's output buffer, allocated once; a scan with more runs than
    /// it holds takes several ioctls. 512 runs (12 KiB) by default: a peer
    /// following a thousand regions holds one per region, and a scan that
    /// finds more runs than that does enough work to amortise the calls.
    private let runs: UnsafeMutableBufferPointer<PagemapScan.Run>

    /// Tracks a region's mapping. Throws `Failure` when the kernel or the
    /// mapping does not allow it (the caller falls back to hashing).
    public convenience init(region: Region) throws {
        try self.init(memory: region.bytes, chunkSize: region.geometry.chunkSize, keepingAlive: region)
    }

    /// Tracks `memory`, which must start on a page boundary and stay mapped
    /// while the tracker lives (`owner` is retained for that). Chunks are
    /// `chunkSize` bytes from the start; the last may be short.
    public init(memory: UnsafeMutableRawBufferPointer, chunkSize: Int, keepingAlive owner: AnyObject? = nil,
                runCapacity: Int = 512) throws {
        pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard let base = memory.baseAddress, memory.count > 0,
              Int(bitPattern: base) % pageSize == 0 else {
            throw Failure(step: "arming", errno: nil, detail: "memory must be non-empty and page-aligned")
        }
        precondition(chunkSize > 0 && runCapacity > 0)
        self.memory = memory
        self.chunkSize = chunkSize
        self.owner = owner
        trackedLength = (memory.count + pageSize - 1) / pageSize * pageSize
        // A mapping of ours cannot wrap the address space.
        trackedEnd = UInt64(UInt(bitPattern: base)) + UInt64(trackedLength)
        chunkCount = (memory.count + chunkSize - 1) / chunkSize

        let offered = try Self.offeredFeatures()
        guard offered & UserFaultFD.Features.writeProtectAsync.rawValue != 0 else {
            throw Failure(step: "UFFDIO_API", errno: nil,
                          detail: "the kernel offers no UFFD_FEATURE_WP_ASYNC (features 0x\(String(offered, radix: 16)); Linux ≥ 6.7 needed)")
        }
        let wanted = UserFaultFD.Features(rawValue: offered)
            .intersection([.writeProtectAsync, .writeProtectUnpopulated, .writeProtectHugetlbfsShmem])
        let uffd = try Self.openUserfaultfd()
        var pagemap: FileDescriptor?
        do {
            do {
                features = try uffd.handshake(requesting: wanted).rawValue
            } catch {
                throw Failure(step: "UFFDIO_API", errno: error, detail: nil)
            }
            let allowed: UserFaultFD.Ioctls
            do {
                allowed = try uffd.register(.writeProtect, base, length: trackedLength)
            } catch {
                throw Failure(step: "UFFDIO_REGISTER", errno: error, detail: nil)
            }
            guard allowed.contains(.writeProtect) else {
                throw Failure(step: "UFFDIO_REGISTER", errno: nil, detail: "UFFDIO_WRITEPROTECT is not allowed on this mapping")
            }
            do {
                try uffd.writeProtect(base, length: trackedLength)
            } catch {
                throw Failure(step: "UFFDIO_WRITEPROTECT", errno: error, detail: nil)
            }
            do {
                pagemap = try FileDescriptor.open("/proc/self/pagemap", .readOnly, options: .closeOnExec)
            } catch let e as Errno {
                throw Failure(step: "open /proc/self/pagemap", errno: e, detail: nil)
            }
        } catch {
            try? pagemap?.close()
            try? uffd.close()
            throw error
        }
        self.uffd = uffd
        self.pagemap = pagemap!
        remote = false
        runs = .allocate(capacity: runCapacity)
        // Proves PAGEMAP_SCAN works here (it reports nothing: all is
        // protected). Should it throw, deinit runs and releases everything.
        try scanWrittenRuns { _ in }
    }

    /// Tracks an attached process's writes: it registered `length` bytes at
    /// `base` (in its own address space) for WP_ASYNC write-protection on
    /// `userfaultfd` and write-protected them; `pagemap` is its
    /// /proc/PID/pagemap. Both descriptors are owned by the tracker from
    /// now on, and closed here should it throw. The first scan proves
    /// PAGEMAP_SCAN works on that range. The numbers come from another
    /// process: the range must lie within the user address space
    /// (`AttachMapping`), so the scan's address arithmetic cannot overflow.
    init(attachedProcessFD userfaultfd: Int32, pagemap: Int32, base: UInt64, length: Int, chunkSize: Int,
         runCapacity: Int = 512) throws {
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let mapping: AttachMapping
        do {
            guard length > 0, chunkSize > 0, runCapacity > 0 else { throw AttachMapping.Invalid.wrongLength(length, regionSize: length) }
            mapping = try AttachMapping(base: base, length: length, regionSize: length, pageSize: pageSize)
        } catch {
            close(userfaultfd)
            close(pagemap)
            throw Failure(step: "attaching", errno: nil, detail: "\(error)")
        }
        self.pageSize = pageSize
        self.uffd = UserFaultFD(rawValue: userfaultfd)
        self.pagemap = FileDescriptor(rawValue: pagemap)
        remote = true
        owner = nil
        features = 0
        self.chunkSize = chunkSize
        trackedLength = mapping.length
        trackedEnd = mapping.end
        chunkCount = (length + chunkSize - 1) / chunkSize
        memory = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: UInt(base)), count: length)
        runs = .allocate(capacity: runCapacity)
    }

    /// The registration's descriptor, for handing to the peer (SCM_RIGHTS).
    var userfaultfdDescriptor: Int32 { uffd.rawValue }

    deinit {
        guard !remote else {
            try? uffd.close()
            try? pagemap.close()
            runs.deallocate()
            return
        }
        // Lifts the protection, so writes stop faulting once nobody tracks.
        try? uffd.unregister(memory.baseAddress, length: trackedLength)
        try? uffd.close()
        try? pagemap.close()
        runs.deallocate()
    }

    /// Chunks holding a page written since the last scan, ascending, each
    /// once; resets those pages.
    public func changedChunks() throws -> [Int] {
        let started = ContinuousClock.now
        var chunks: [Int] = []
        try scanWrittenRuns { bytes in
            var first = bytes.lowerBound / chunkSize
            let last = min((bytes.upperBound - 1) / chunkSize, chunkCount - 1)
            if let previous = chunks.last, previous >= first { first = previous + 1 }
            if first <= last { chunks.append(contentsOf: first...last) }
        }
        statistics.record(ContinuousClock.now - started, changedChunks: chunks.count)
        return chunks
    }

    /// Pages written since the last scan (index from the start of the
    /// memory), ascending; resets them. Page-granular for tests and tools.
    public func changedPages() throws -> [Int] {
        let started = ContinuousClock.now
        var pages: [Int] = []
        try scanWrittenRuns { bytes in
            pages.append(contentsOf: (bytes.lowerBound / pageSize)..<(bytes.upperBound / pageSize))
        }
        statistics.record(ContinuousClock.now - started, changedChunks: Set(pages.map { $0 * pageSize / chunkSize }).count)
        return pages
    }

    /// Calls `body` with each run of written pages (byte offsets from the
    /// start of the memory), ascending, and write-protects them again.
    private func scanWrittenRuns(_ body: (Range<Int>) -> Void) throws {
        let base = UInt64(UInt(bitPattern: memory.baseAddress!))
        let end = trackedEnd
        var start = base
        while true {
            let found: Int, walkEnd: UInt64
            do {
                (found, walkEnd) = try PagemapScan.takeWritten(pagemap, from: start, to: end, into: runs)
            } catch {
                // A failure after the kernel reset some pages would lose
                // their writes: the caller must not trust this tracker any more.
                throw Failure(step: "PAGEMAP_SCAN", errno: error, detail: nil)
            }
            for run in runs.prefix(found) {
                body(Int(run.start - base)..<Int(run.end - base))
            }
            // Only a full buffer means the walk stopped early: continue from
            // walk_end. A complete walk can still leave walk_end short of
            // end (seen with more than 512 runs), so that alone is no sign.
            guard found == runs.count, walkEnd < end else { return }
            start = walkEnd
        }
    }

    /// The features this kernel's userfaultfd offers (asked on a probe
    /// descriptor: UFFDIO_API may be called only once per descriptor).
    public static func offeredFeatures() throws -> UInt64 {
        let probe = try openUserfaultfd()
        defer { try? probe.close() }
        do {
            return try probe.handshake(requesting: []).rawValue
        } catch {
            throw Failure(step: "UFFDIO_API", errno: error, detail: nil)
        }
    }

    /// A non-blocking userfaultfd (`UserFaultFD.open`: /dev/userfaultfd,
    /// else the syscall).
    static func openUserfaultfd() throws -> UserFaultFD {
        do {
            return try UserFaultFD.open()
        } catch {
            throw Failure(step: "userfaultfd", errno: error.syscall, detail: "/dev/userfaultfd: \(error.device)")
        }
    }
}
