import CCompression

/// zstd (level 1) and lz4 over a PAGES frame's page bytes, with reusable
/// contexts. Decompression never writes past the size the frame's masks
/// imply, and any other result is a malformed frame.
///
/// The zstd contexts (about 300 KiB to compress, 95 KiB to decompress,
/// once used) are made on first use: a region stream that never meets
/// zstd, the default being lz4, holds neither.
///
/// Not thread-safe: one per region stream side.
public final class PageCompressor {
    private var zstdCompressionContext: OpaquePointer?
    private var zstdDecompressionContext: OpaquePointer?
    /// zstd's fastest standard level: the link, not the ratio, is the point.
    static let zstdLevel: Int32 = 1

    public init() {}

    deinit {
        if let c = zstdCompressionContext { ZSTD_freeCCtx(c) }
        if let d = zstdDecompressionContext { ZSTD_freeDCtx(d) }
    }

    private var zstdCompression: OpaquePointer {
        if let c = zstdCompressionContext { return c }
        guard let c = ZSTD_createCCtx() else { fatalError("zstd: out of memory") }
        zstdCompressionContext = c
        return c
    }

    private var zstdDecompression: OpaquePointer {
        if let d = zstdDecompressionContext { return d }
        guard let d = ZSTD_createDCtx() else { fatalError("zstd: out of memory") }
        zstdDecompressionContext = d
        return d
    }

    /// Room `compress` may need for `count` bytes.
    public static func bound(_ count: Int) -> Int {
        max(ZSTD_compressBound(count), Int(LZ4_compressBound(Int32(count))))
    }

    /// Compresses `source` into `destination` (at least `bound(source.count)`
    /// bytes); returns the compressed size, nil if the codec failed.
    public func compress(_ source: UnsafeRawBufferPointer, with codec: PageCodec,
                         into destination: UnsafeMutableRawBufferPointer) -> Int? {
        guard let src = source.baseAddress, let dst = destination.baseAddress else { return nil }
        switch codec {
        case .none:
            return nil
        case .zstd:
            let n = ZSTD_compressCCtx(zstdCompression, dst, destination.count, src, source.count, Self.zstdLevel)
            return ZSTD_isError(n) != 0 ? nil : n
        case .lz4:
            let n = LZ4_compress_default(src.assumingMemoryBound(to: CChar.self), dst.assumingMemoryBound(to: CChar.self),
                                         Int32(source.count), Int32(destination.count))
            return n > 0 ? Int(n) : nil
        }
    }

    /// Decompresses `source` into `destination`, which it must fill exactly.
    public func decompress(_ source: UnsafeRawBufferPointer, with codec: PageCodec,
                           into destination: UnsafeMutableRawBufferPointer) throws(ProtocolViolation) {
        guard let dst = destination.baseAddress else { return }
        let src = source.baseAddress ?? UnsafeRawPointer(dst)
        let produced: Int
        switch codec {
        case .none:
            guard source.count == destination.count else {
                throw ProtocolViolation(.malformedFrame, "PAGES carries \(source.count) page bytes, its masks say \(destination.count)")
            }
            destination.copyMemory(from: source)
            return
        case .zstd:
            let n = ZSTD_decompressDCtx(zstdDecompression, dst, destination.count, src, source.count)
            produced = ZSTD_isError(n) != 0 ? -1 : n
        case .lz4:
            produced = Int(LZ4_decompress_safe(src.assumingMemoryBound(to: CChar.self), dst.assumingMemoryBound(to: CChar.self),
                                               Int32(source.count), Int32(destination.count)))
        }
        guard produced == destination.count else {
            throw ProtocolViolation(.malformedFrame, "PAGES \(codec) payload of \(source.count) bytes does not decompress to "
                                    + "the \(destination.count) its masks say")
        }
    }
}
