extension Frame {
    /// PAGES (0x14): one chunk at `version`, as changes to what the replica
    /// holds. Page i (4 KiB, the last one of the region maybe shorter) is
    /// either present (its bytes follow, in page order, through `codec`),
    /// zero (it is now all zeros; no bytes), or neither (unchanged: the
    /// replica keeps what it holds). When some page is unchanged, `check`
    /// is the keyed hash (`PageTagHasher`) of the whole chunk as the replica
    /// must hold it once applied, so a replica whose copy drifted from
    /// what the primary last sent finds out at once instead of keeping a
    /// mixed chunk. docs/PROTOCOL.md §2 has the layout.
    public struct Pages: Equatable, Sendable {
        public var chunk: UInt64
        public var version: UInt64
        /// Pages of this chunk: its length over 4 KiB, rounded up.
        public var pageCount: Int
        /// Bit i (byte i / 8, bit i % 8 from the least significant): page i's bytes follow.
        public var present: [UInt8]
        /// Bit i: page i is now all zeros. Never set together with `present`'s bit i.
        public var zero: [UInt8]
        public var codec: PageCodec
        /// Set when some page is neither present nor zero.
        public var check: ChunkHash?
        /// The present pages in page order, compressed whole by `codec`.
        public var payload: [UInt8]

        public init(chunk: UInt64, version: UInt64, pageCount: Int, present: [UInt8], zero: [UInt8], codec: PageCodec,
                    check: ChunkHash?, payload: [UInt8]) {
            self.chunk = chunk; self.version = version; self.pageCount = pageCount
            self.present = present; self.zero = zero; self.codec = codec; self.check = check; self.payload = payload
        }

        public static func maskBytes(pages: Int) -> Int { (pages + 7) / 8 }

        public func isPresent(_ page: Int) -> Bool { present[page >> 3] & (1 << UInt8(page & 7)) != 0 }
        public func isZero(_ page: Int) -> Bool { zero[page >> 3] & (1 << UInt8(page & 7)) != 0 }
        public var presentCount: Int { present.reduce(0) { $0 + $1.nonzeroBitCount } }
        public var zeroCount: Int { zero.reduce(0) { $0 + $1.nonzeroBitCount } }

        /// Payload fields before the pages' bytes.
        func headerFields() -> [UInt8] {
            var fields: [UInt8] = []
            VarInt.encode(chunk, into: &fields)
            VarInt.encode(version, into: &fields)
            VarInt.encode(UInt64(pageCount), into: &fields)
            fields += present
            fields += zero
            VarInt.encode(UInt64(codec.rawValue), into: &fields)
            if let check {
                VarInt.encode(UInt64(ChunkHash.byteCount), into: &fields)
                check.append(to: &fields)
            } else {
                VarInt.encode(0, into: &fields)
            }
            return fields
        }
    }
}

/// How a PAGES frame's page bytes are compressed, as one block.
public enum PageCodec: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case none = 0, zstd = 1, lz4 = 2

    /// By the name `description` gives ("zstd", "lz4", "none").
    public init?(name: String) {
        guard let codec = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = codec
    }

    /// What a peer set to `codec` offers as a mirror (none: pages only, it
    /// spends no CPU on decompression) and prefers as an exporter.
    public static func settings(_ codec: PageCodec?) -> (offers: WireCapabilities, preference: [PageCodec]) {
        switch codec {
        case .zstd?: return (.all, [.zstd, .lz4])
        case nil, .lz4?: return (.all, [.lz4, .zstd])
        case .none?: return ([.pages, .lanes], [])
        }
    }
    public var description: String {
        switch self {
        case .none: "none"
        case .zstd: "zstd"
        case .lz4: "lz4"
        }
    }
}

/// The page grid PAGES frames use: 4 KiB, the smallest chunk size, so a
/// chunk is always whole pages but perhaps the region's last.
public enum PageLayout {
    public static let pageSize = 4096

    public static func pageCount(ofChunkBytes n: Int) -> Int { (n + pageSize - 1) / pageSize }

    /// Byte range of page `i` within a chunk of `n` bytes.
    public static func range(ofPage i: Int, inChunkOf n: Int) -> Range<Int> {
        i * pageSize..<min(n, (i + 1) * pageSize)
    }
}
