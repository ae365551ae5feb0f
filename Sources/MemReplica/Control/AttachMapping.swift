#if canImport(Glibc)
import Glibc
#endif

/// A client's mapping of a whole region, as its `attach` request states it
/// (`base`, `length`). The numbers come from another process, so they are
/// checked once, here, with overflow-checked arithmetic, before anything
/// else is done with the request; every address computed downstream lies
/// within `base ..< end`, so none of those computations can overflow.
public struct AttachMapping: Sendable, Equatable {
    /// The first address past the user address space of x86-64 with 4-level
    /// paging (47 bits; Linux maps nothing above it unless a process asks
    /// for 5-level addresses with an mmap hint, which clients do not).
    /// A mapping must end at or below it.
    public static let userAddressSpaceEnd: UInt64 = 0x0000_8000_0000_0000

    /// Start of the mapping in the client's address space: non-zero, page-aligned.
    public let base: UInt64
    /// Its length as the client registered it: the region's size rounded up
    /// to whole pages (what userfaultfd registers).
    public let length: Int
    /// `base + length`, at most `userAddressSpaceEnd`.
    public let end: UInt64

    /// Why a mapping was refused, worded for the attaching process.
    public enum Invalid: Error, Equatable, CustomStringConvertible {
        case missing
        case wrongLength(Int, regionSize: Int)
        case zeroBase
        case misaligned(base: UInt64, pageSize: Int)
        case outsideUserSpace(base: UInt64, length: Int)

        public var description: String {
            switch self {
            case .missing:
                return "an attach with a descriptor needs base and length (the client's mapping)"
            case .wrongLength(let length, let size):
                return "length \(length) does not cover the region: the mapping must cover the whole region "
                    + "(\(size) bytes, or that rounded up to whole pages) from a page-aligned address"
            case .zeroBase:
                return "base 0 is not a mapping"
            case .misaligned(let base, let page):
                return "base 0x\(String(base, radix: 16)) is not aligned to the \(page)-byte page"
            case .outsideUserSpace(let base, let length):
                return "base 0x\(String(base, radix: 16)) + \(length) bytes reaches past the user address space "
                    + "(0x\(String(AttachMapping.userAddressSpaceEnd, radix: 16)))"
            }
        }
    }

    /// Checks a request's numbers against a region of `regionSize` bytes.
    public init(base: UInt64?, length: Int?, regionSize: Int, pageSize: Int = Int(getpagesize())) throws(Invalid) {
        guard let base, let length else { throw .missing }
        precondition(regionSize > 0 && pageSize > 0 && pageSize & (pageSize - 1) == 0)
        // The region's own size is bounded (`RegionGeometry.maximumSize`):
        // rounding it cannot overflow.
        let whole = (regionSize + pageSize - 1) / pageSize * pageSize
        guard length == regionSize || length == whole else { throw .wrongLength(length, regionSize: regionSize) }
        guard base != 0 else { throw .zeroBase }
        guard base % UInt64(pageSize) == 0 else { throw .misaligned(base: base, pageSize: pageSize) }
        let (end, overflow) = base.addingReportingOverflow(UInt64(whole))
        guard !overflow, end <= Self.userAddressSpaceEnd else { throw .outsideUserSpace(base: base, length: whole) }
        self.base = base
        self.length = whole
        self.end = end
    }
}
