import QuicShim
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
            }
        }
    }

    public let name: String
    public let geometry: RegionGeometry
    public let backing: Backing
    private let fd: FileDescriptor
    private let base: UnsafeMutableRawPointer

    /// Opens or creates the backing and maps it. For a file, `size` nil means
    /// "the file's current size"; a file shorter than `size` is extended
    /// (with zeros), a longer one is refused rather than silently cut.
    public init(name: String, backing: Backing, size: Int?, chunkSize: Int) throws {
        self.name = name
        self.backing = backing
        let descriptor: FileDescriptor
        let length: Int
        var current = 0
        switch backing {
        case .memory:
            guard let size else { throw Failure.sizeUnknown(path: "memfd") }
            let raw = qs_memfd_create("memreplica-\(name)")
            guard raw >= 0 else { throw Failure.open(path: "memfd", errno: Errno(rawValue: errno)) }
            descriptor = FileDescriptor(rawValue: raw)
            length = size
        case .file(let path):
            do {
                descriptor = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .closeOnExec],
                                                     permissions: [.ownerReadWrite])
            } catch let e as Errno {
                throw Failure.open(path: path, errno: e)
            }
            var st = stat()
            guard fstat(descriptor.rawValue, &st) == 0 else {
                try? descriptor.close()
                throw Failure.open(path: path, errno: Errno(rawValue: errno))
            }
            current = Int(st.st_size)
            switch size {
            case nil where current == 0:
                try? descriptor.close()
                throw Failure.sizeUnknown(path: path)
            case nil:
                length = current
            case let wanted? where current > wanted:
                try? descriptor.close()
                throw Failure.sizeMismatch(path: path, file: current, wanted: wanted)
            case let wanted?:
                length = wanted
            }
        }
        do {
            geometry = try RegionGeometry(size: length, chunkSize: chunkSize)
            // A new memfd is empty and a short file grows (with zeros).
            if current < length, ftruncate(descriptor.rawValue, off_t(length)) != 0 {
                throw Failure.map(errno: Errno(rawValue: errno))
            }
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, 0)
            guard let p, p != MAP_FAILED else { throw Failure.map(errno: Errno(rawValue: errno)) }
            base = p
        } catch {
            try? descriptor.close()
            throw error
        }
        fd = descriptor
    }

    deinit {
        munmap(base, geometry.size)
        try? fd.close()
    }

    /// The whole mapping. Callers that write must be the region's owner.
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: geometry.size)
    }

    /// A snapshot of one chunk, safe to hand to the transport.
    public func copyChunk(_ index: Int) throws -> [UInt8] {
        Array(try chunkBytes(index))
    }

    /// One chunk's bytes in the live mapping (they change under a reader).
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
    }
}
