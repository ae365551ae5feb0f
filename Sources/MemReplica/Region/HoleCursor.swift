import LinuxShim
#if canImport(Glibc)
import Glibc
#endif

/// Finds the holes of a region's backing (SEEK_DATA / SEEK_HOLE) while a
/// pass walks its chunks in ascending order, so that a chunk with no page
/// behind it is known to be zeros without touching it. Why: reading a
/// hole through a shared mapping of a memfd or tmpfs file allocates a page
/// for it, so a pass over a sparse 16 GiB region would fill the host's
/// memory with zeros (the kernel's OOM killer ended such a run).
///
/// A hole seen here may be written a moment later; whoever skips it must
/// have armed the region's dirty tracker first, so that the write is sent
/// by a later pass (the initial pass's rule for every chunk anyway).
///
/// One or two `lseek` calls per run of holes or data, none per chunk
/// inside a run already found. Where the filesystem cannot say (an error
/// other than ENXIO), every chunk counts as data: read as before.
public struct HoleCursor {
    private let descriptor: Int32
    /// No data in `from..<dataStart`; data in `dataStart..<dataEnd`.
    private var from = 0
    private var dataStart = 0
    private var dataEnd = 0
    private var known = false

    public init(_ region: Region) {
        descriptor = region.backingDescriptor
    }

    /// Zeros enough for any chunk: a read-only private anonymous mapping,
    /// which reads the kernel's zero page and costs no memory.
    nonisolated(unsafe) private static let zeros: UnsafeRawBufferPointer = {
        let size = RegionGeometry.maximumChunkSize
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED, "mapping \(size) bytes of zeros failed")
        return UnsafeRawBufferPointer(start: p, count: size)
    }()

    /// The bytes of `region`'s chunk: the live mapping's, or zeros where
    /// the backing has a hole (untouched, so nothing is allocated).
    public mutating func chunkBytes(_ chunk: Int, of region: Region) throws -> UnsafeRawBufferPointer {
        guard let range = region.geometry.byteRange(ofChunk: chunk), isHole(range) else {
            return try region.chunkBytes(chunk)
        }
        return UnsafeRawBufferPointer(rebasing: Self.zeros[..<range.count])
    }

    /// Whether `range` (bytes of the backing) holds no data now.
    public mutating func isHole(_ range: Range<Int>) -> Bool {
        if !known || range.lowerBound < from || range.lowerBound >= dataEnd {
            guard locate(from: range.lowerBound) else { return false }
        }
        return range.upperBound <= dataStart
    }

    private mutating func locate(from offset: Int) -> Bool {
        let data = qs_seek_data(descriptor, Int64(offset))
        if data < 0 {
            // ENXIO: no data at or past `offset`; anything else: unknown.
            guard data == -Int64(ENXIO) else { known = false; return false }
            (from, dataStart, dataEnd, known) = (offset, Int.max, Int.max, true)
            return true
        }
        let hole = qs_seek_hole(descriptor, data)
        (from, dataStart, dataEnd, known) = (offset, Int(data), hole < 0 ? Int.max : Int(hole), true)
        return true
    }
}
