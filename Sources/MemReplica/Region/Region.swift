import MemReplicaSystem
import LinuxShim
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A named, shared memory mapping replicated chunk by chunk: backed by an
/// anonymous memfd, a `/dev/shm` file or a regular file. The mapping is
/// MAP_SHARED, so other processes that map the same file see one memory.
///
/// The region is live: its owner may write any byte at any time. Readers
/// that send bytes over the network take a snapshot (`copyChunk`, or the
/// transport's own copy of `chunkBytes`) first, since the transport
/// retransmits from its copy.
///
/// The backing can fail under the mapping: another process truncates the
/// file, or its filesystem cannot provide a page. Touching such a page
/// raises SIGBUS; the region's `BackingGuard` turns that into a private zero
/// page and a count, so every copy out of the mapping is followed by
/// `checkIntact()` (copies of a damaged region are thrown away, never
/// sent), and `checkBacking()` also compares the file's size with the
/// region's once per scan pass. A damaged region stays damaged: the pages
/// that faulted are no longer the file's.
public final class Region: @unchecked Sendable {
    public enum Backing: Sendable, Equatable, CustomStringConvertible {
        /// Anonymous memory (memfd), private to this process and its children.
        case memory
        /// A file (a path under /dev/shm is shared memory).
        case file(path: String)

        public var description: String {
            switch self {
            case .memory: return "memfd"
            case .file(let path): return path
            }
        }
    }

    public enum Failure: Error, CustomStringConvertible {
        case open(path: String, errno: Errno)
        case sizeUnknown(path: String)
        case sizeMismatch(path: String, file: Int, wanted: Int)
        case map(errno: Errno)
        case chunkOutOfRange(index: Int, count: Int)
        case wrongChunkLength(index: Int, expected: Int, got: Int)
        /// The file's filesystem cannot hold the region (`Allocation`).
        case noSpace(path: String, size: Int, free: Int)
        case allocate(path: String, errno: Errno)
        /// More regions mapped in this process than `BackingGuard.limit`.
        case tooManyRegions(limit: Int)
        /// The backing failed under the mapping (see the type's comment):
        /// the region is not served any more.
        case unavailable(region: String, reason: String)

        public var description: String {
            switch self {
            case .open(let path, let e): return "cannot open region file \(path): \(e)"
            case .sizeUnknown(let path): return "\(path) is empty: give the region's size (size=BYTES)"
            case .sizeMismatch(let path, let file, let wanted):
                return "\(path) holds \(file) bytes but the region is \(wanted) bytes"
            case .map(let e): return "cannot map region: \(e)"
            case .chunkOutOfRange(let i, let n): return "chunk \(i) is outside the region (\(n) chunks)"
            case .wrongChunkLength(let i, let expected, let got):
                return "chunk \(i) holds \(expected) bytes, got \(got)"
            case .noSpace(let path, let size, let free):
                return "no room for region file \(path): it needs \(Region.describe(bytes: size)) "
                    + "but its filesystem has \(Region.describe(bytes: free)) free"
            case .allocate(let path, let e): return "cannot allocate region file \(path): \(e)"
            case .tooManyRegions(let limit): return "more than \(limit) regions mapped in one process"
            case .unavailable(let region, let reason): return "region '\(region)' is unavailable: \(reason)"
            }
        }
    }

    public let name: String
    public let geometry: RegionGeometry
    public let backing: Backing
    private let fd: FileDescriptor
    /// The backing's descriptor, for `HoleCursor`'s lseek.
    var backingDescriptor: Int32 { fd.rawValue }
    private let base: UnsafeMutableRawPointer
    private let backingGuard: BackingGuard
    /// Why the backing failed, once it did (sticky), and a flag that says
    /// so without the lock: the check after every copy reads only the flag
    /// and the SIGBUS count.
    private let damage = Locked<String?>(nil)
    private let damaged = Atomic<Bool>(false)

    /// Opens or creates the backing and maps it. For a file, `size` nil means
    /// "the file's current size"; a file shorter than `size` is extended
    /// (with zeros), a longer one is refused rather than silently cut. A
    /// file's blocks are reserved as `allocation` says; a file this call
    /// created is removed again, and one it extended cut back, should it fail.
    public init(name: String, backing: Backing, size: Int?, chunkSize: Int,
                allocation: Allocation = .reserved) throws {
        self.name = name
        self.backing = backing
        let descriptor: FileDescriptor
        let length: Int
        var current = 0
        var created = false
        switch backing {
        case .memory:
            guard let size else { throw Failure.sizeUnknown(path: "memfd") }
            let raw = qs_memfd_create("memreplica-\(name)")
            guard raw >= 0 else { throw Failure.open(path: "memfd", errno: Errno(rawValue: errno)) }
            descriptor = FileDescriptor(rawValue: raw)
            length = size
        case .file(let path):
            let opened = try Self.openOrCreate(path)
            descriptor = opened.0
            created = opened.created
            var st = stat()
            var refusal: Failure?
            if fstat(descriptor.rawValue, &st) != 0 {
                refusal = .open(path: path, errno: Errno(rawValue: errno))
            } else {
                current = Int(st.st_size)
                if current == 0, size == nil { refusal = .sizeUnknown(path: path) }
                if let wanted = size, current > wanted { refusal = .sizeMismatch(path: path, file: current, wanted: wanted) }
            }
            if let refusal {
                try? descriptor.close()
                if created { unlink(path) }
                throw refusal
            }
            length = size ?? current
        }
        var mapped: UnsafeMutableRawPointer?
        do {
            geometry = try RegionGeometry(size: length, chunkSize: chunkSize)
            if case .file(let path) = backing {
                try Self.allocate(descriptor, path: path, length: length, current: current, as: allocation)
            } else if ftruncate(descriptor.rawValue, off_t(length)) != 0 {
                // A new memfd is empty.
                throw Failure.map(errno: Errno(rawValue: errno))
            }
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, 0)
            guard let p, p != MAP_FAILED else { throw Failure.map(errno: Errno(rawValue: errno)) }
            mapped = p
            backingGuard = try BackingGuard(start: p, length: length)
            base = p
        } catch {
            if let mapped { munmap(mapped, length) }
            if case .file(let path) = backing {
                if created {
                    unlink(path)
                } else if current < length {
                    _ = ftruncate(descriptor.rawValue, off_t(current))
                }
            }
            try? descriptor.close()
            throw error
        }
        fd = descriptor
    }

    deinit {
        // Before the range is unmapped: the handler must never match an
        // address that may already belong to another mapping.
        backingGuard.unregister()
        munmap(base, geometry.size)
        try? fd.close()
    }

    /// Opens `path` read-write, creating it (0600) if it does not exist;
    /// says whether it did, so a failed set-up removes only what it made.
    private static func openOrCreate(_ path: String) throws -> (FileDescriptor, created: Bool) {
        while true {
            do {
                return (try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec]), false)
            } catch let e as Errno where e == .noSuchFileOrDirectory {
                // Created here, unless another process made it meanwhile.
            } catch let e as Errno {
                throw Failure.open(path: path, errno: e)
            }
            do {
                return (try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .exclusiveCreate, .closeOnExec],
                                                permissions: [.ownerReadWrite]), true)
            } catch let e as Errno where e == .fileExists {
                continue
            } catch let e as Errno {
                throw Failure.open(path: path, errno: e)
            }
        }
    }

    /// Why the backing failed, or nil while it holds: the count of caught
    /// SIGBUS faults (an atomic load) and, with `checkingSize`, the file's
    /// size compared with the region's (one fstat), which notices a
    /// truncation before anything touches the missing pages.
    public func unavailability(checkingSize: Bool) -> String? {
        if backingGuard.faults == 0, !damaged.load(ordering: .acquiring) {
            guard checkingSize, let size = backingSize(), size < geometry.size else { return nil }
            return markDamaged(truncationReason(size))
        }
        return damage.withLock { $0 } ?? markDamaged(faultReason())
    }

    /// Throws `Failure.unavailable` once a copy out of the mapping may have
    /// read a page the backing could not provide. Cheap: call it after
    /// every copy, before the bytes go anywhere.
    public func checkIntact() throws(Failure) {
        if let reason = unavailability(checkingSize: false) { throw .unavailable(region: name, reason: reason) }
    }

    /// `checkIntact`, and the file's size: once per scan pass.
    public func checkBacking() throws(Failure) {
        if let reason = unavailability(checkingSize: true) { throw .unavailable(region: name, reason: reason) }
    }

    /// Why the region is unavailable, or nil while it is intact.
    public var failure: String? { unavailability(checkingSize: true) }

    /// Records the first reason only: later symptoms follow from it.
    private func markDamaged(_ reason: String) -> String {
        let first = damage.withLock { d in
            if d == nil { d = reason }
            return d!
        }
        damaged.store(true, ordering: .releasing)
        return first
    }

    private func backingSize() -> Int? {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return nil }
        return Int(st.st_size)
    }

    private func truncationReason(_ size: Int) -> String {
        "its file \(backing) was truncated to \(size) bytes under the mapping (the region is \(geometry.size) bytes); "
            + "it is no longer served"
    }

    private func faultReason() -> String {
        if let size = backingSize(), size < geometry.size { return truncationReason(size) }
        let offset = Int(bitPattern: backingGuard.firstFaultAddress) - Int(bitPattern: base)
        return "reading or writing offset \(offset) of \(backing) raised SIGBUS (the file was cut under the mapping, "
            + "or its filesystem could not provide the page); it is no longer served"
    }

    /// "16777216 bytes (16.0 MiB)", for messages about sizes.
    static func describe(bytes: Int) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = "bytes"
        for next in units where value >= 1024 {
            value /= 1024
            unit = next
        }
        return unit == "bytes" ? "\(bytes) bytes" : "\(bytes) bytes (\(String(format: "%.1f", value)) \(unit))"
    }

    /// The whole mapping. Callers that write must be the region's owner.
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: geometry.size)
    }

    /// A snapshot of one chunk, safe to hand to the transport; throws
    /// `Failure.unavailable` instead of bytes the backing could not provide.
    public func copyChunk(_ index: Int) throws -> [UInt8] {
        let copy = Array(try chunkBytes(index))
        try checkIntact()
        return copy
    }

    /// One chunk's bytes in the live mapping (they change under a reader).
    /// Whoever copies them must call `checkIntact()` after the copy.
    public func chunkBytes(_ index: Int) throws -> UnsafeRawBufferPointer {
        guard let range = geometry.byteRange(ofChunk: index) else {
            throw Failure.chunkOutOfRange(index: index, count: geometry.chunkCount)
        }
        return UnsafeRawBufferPointer(rebasing: bytes[range])
    }

    /// A path another local process can open to map this region: the file,
    /// or for a memfd its entry under this process's /proc.
    public var mappablePath: String {
        switch backing {
        case .memory: return "/proc/\(getpid())/fd/\(fd.rawValue)"
        case .file(let path): return path
        }
    }

    /// Whether the backing is shared memory (memfd or tmpfs, e.g. /dev/shm):
    /// the only file-backed memory userfaultfd MISSING faults work on.
    public var isSharedMemory: Bool {
        var fs = statfs()
        guard fstatfs(fd.rawValue, &fs) == 0 else { return false }
        return fs.f_type == Region.tmpfsMagic
    }
    static let tmpfsMagic = 0x0102_1994

    /// Whether files made in `folder` are shared memory (tmpfs).
    public static func isSharedMemory(folder: String) -> Bool {
        var fs = statfs()
        guard statfs(folder, &fs) == 0 else { return false }
        return fs.f_type == Region.tmpfsMagic
    }

    /// One chunk's bytes read from the file, not the mapping: a hole reads
    /// as zeros without allocating a page or raising a userfaultfd fault.
    public func readChunkFromFile(_ index: Int) throws -> [UInt8] {
        guard let range = geometry.byteRange(ofChunk: index) else {
            throw Failure.chunkOutOfRange(index: index, count: geometry.chunkCount)
        }
        var out = [UInt8](repeating: 0, count: range.count)
        let n = try out.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: Int64(range.lowerBound), into: $0) }
        guard n == range.count else { throw Failure.wrongChunkLength(index: index, expected: range.count, got: n) }
        return out
    }

    /// Frees the pages of `range` (MADV_REMOVE): the file reads as zeros
    /// there, and a userfaultfd-registered mapping faults on next access.
    public func discard(_ range: Range<Int>) throws {
        guard !range.isEmpty, let base = bytes.baseAddress else { return }
        guard madvise(base + range.lowerBound, range.count, MADV_REMOVE) == 0 else {
            throw Failure.map(errno: Errno(rawValue: errno))
        }
    }

    /// Allocates the pages of `range` ahead of use (MADV_POPULATE_WRITE)
    /// without changing their bytes, so a replica receiving a full copy does
    /// not take a page fault per page on the receive path. Best effort:
    /// false when the kernel refuses (older than 5.14, or out of memory).
    @discardableResult
    public func populate(_ range: Range<Int>) -> Bool {
        guard !range.isEmpty, let base = bytes.baseAddress else { return true }
        return madvise(base + range.lowerBound, range.count, Region.madvisePopulateWrite) == 0
    }

    /// MADV_POPULATE_WRITE (Linux 5.14); Debian's Glibc headers predate it.
    static let madvisePopulateWrite: Int32 = 23

    /// Replaces one chunk's bytes (a replica applying a WRITE).
    public func storeChunk(_ index: Int, _ data: some Collection<UInt8>) throws {
        guard let range = geometry.byteRange(ofChunk: index) else {
            throw Failure.chunkOutOfRange(index: index, count: geometry.chunkCount)
        }
        guard data.count == range.count else {
            throw Failure.wrongChunkLength(index: index, expected: range.count, got: data.count)
        }
        UnsafeMutableRawBufferPointer(rebasing: bytes[range]).copyBytes(from: data)
        // A store the file could not take landed in a private zero page.
        try checkIntact()
    }
}
