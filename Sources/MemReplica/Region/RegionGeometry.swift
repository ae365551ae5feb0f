/// A region's size and chunk size. Both are part of the region's identity:
/// a mirror whose geometry differs from the primary's is refused.
public struct RegionGeometry: Sendable, Hashable, Codable, CustomStringConvertible {
    public let size: Int
    public let chunkSize: Int

    /// Chunks are at least a page, so every chunk maps to whole pages (the
    /// userfaultfd tracker works in pages), and a power of two.
    public static let minimumChunkSize = 4096
    /// A chunk travels in one WRITE frame; frames are capped at 1 MiB of data.
    public static let maximumChunkSize = 1 << 20
    public static let maximumSize = 1 << 40

    public enum Invalid: Error, Equatable, CustomStringConvertible {
        case size(Int)
        case chunkSize(Int)
        public var description: String {
            switch self {
            case .size(let s):
                return "region size \(s) must be from 1 byte to \(RegionGeometry.maximumSize >> 30) GiB"
            case .chunkSize(let c):
                return "chunk size \(c) must be a power of two from \(RegionGeometry.minimumChunkSize) to \(RegionGeometry.maximumChunkSize)"
            }
        }
    }

    public init(size: Int, chunkSize: Int) throws {
        guard Self.isValid(size: size) else { throw Invalid.size(size) }
        guard Self.isValid(chunkSize: chunkSize) else { throw Invalid.chunkSize(chunkSize) }
        self.size = size
        self.chunkSize = chunkSize
    }

    public static func isValid(size: Int) -> Bool { size > 0 && size <= maximumSize }

    public static func isValid(chunkSize: Int) -> Bool {
        chunkSize >= minimumChunkSize && chunkSize <= maximumChunkSize && chunkSize & (chunkSize - 1) == 0
    }

    /// The last chunk may be shorter when size is not a multiple of chunkSize.
    public var chunkCount: Int { (size + chunkSize - 1) / chunkSize }

    /// Byte range of chunk `index`; nil when the index is outside the region.
    public func byteRange(ofChunk index: Int) -> Range<Int>? {
        guard index >= 0, index < chunkCount else { return nil }
        let start = index * chunkSize
        return start..<min(start + chunkSize, size)
    }

    public var description: String { "\(size) bytes in \(chunkCount) chunks of \(chunkSize)" }
}
