/// One message of wire protocol v1: `type (u8) · length (varint) · payload`.
/// docs/PROTOCOL.md is the normative description; `FrameCodec` enforces
/// the limits in `FrameLimits` on every frame in both directions.
public enum Frame: Equatable, Sendable {
    /// 0x01, both ways first on the control stream.
    case hello(Hello)
    /// 0x02, exporting side → peer: the regions it offers.
    case catalog([CatalogEntry])
    /// 0x03, mirror → exporter: start replicating one region.
    case subscribe(Subscribe)
    /// 0x04, mirror → exporter after SUBSCRIBE: hashes of the chunks the
    /// mirror already holds, so only different ones are sent (resume).
    case have(firstChunk: UInt64, hashes: [UInt64])
    /// 0x13, primary → replica: the initial pass is complete at `version`;
    /// every chunk not sent in it was already identical.
    case synced(version: UInt64)
    /// 0x10, primary → replica: the bytes of one chunk at a version.
    case write(chunk: UInt64, version: UInt64, bytes: [UInt8])
    /// 0x11, primary → replica: these chunks changed (lazy mirrors pull).
    case dirty(epoch: UInt64, chunks: [UInt64])
    /// 0x12, replica → primary: everything up to `version` is applied.
    case ack(version: UInt64)
    /// 0x20, replica → primary: send chunks first..<first+count.
    case read(firstChunk: UInt64, count: UInt64)
    /// 0x21, answer to READ: consecutive chunks' bytes.
    case data(firstChunk: UInt64, bytes: [UInt8])
    /// 0x30, either way: a diagnostic; the receiver sends the same bytes
    /// back on the same stream (what `memreplica ping` measures).
    case echo([UInt8])
    /// 0x3f, either way: why the sender is about to end this stream.
    case error(code: UInt64, message: String)

    public struct Hello: Equatable, Sendable {
        public var protocolVersion: UInt64
        public var peerName: String
        /// Bit set of optional features; none defined in v1 (send 0, ignore unknown bits).
        public var capabilities: UInt64
        public init(protocolVersion: UInt64 = Frame.protocolVersion, peerName: String, capabilities: UInt64 = 0) {
            self.protocolVersion = protocolVersion
            self.peerName = peerName
            self.capabilities = capabilities
        }
    }

    public struct CatalogEntry: Equatable, Sendable {
        public var name: String
        public var size: UInt64
        public var chunkSize: UInt64
        public var version: UInt64
        public init(name: String, size: UInt64, chunkSize: UInt64, version: UInt64) {
            self.name = name; self.size = size; self.chunkSize = chunkSize; self.version = version
        }
    }

    public struct Subscribe: Equatable, Sendable {
        public enum Mode: UInt64, Sendable {
            /// The primary pushes every changed chunk's bytes (WRITE).
            case eager = 0
            /// The primary names changed chunks (DIRTY); the replica pulls.
            case lazy = 1
            /// A stream that only carries READ → DATA for the region, for
            /// reads someone waits on (faults): the exporter sends its answers
            /// ahead of other streams.
            case reads = 2
            /// READ → DATA like `reads`, for a background pull: answered at
            /// the same pace as other bulk streams, so it never holds up
            /// faults or the region stream's DIRTY and SYNCED.
            case pull = 3

            /// READ → DATA streams (`reads` and `pull`).
            public var isReads: Bool { self == .reads || self == .pull }
        }
        public var name: String
        public var size: UInt64
        public var chunkSize: UInt64
        public var mode: Mode
        /// Chunks whose hashes follow in HAVE frames: 0 (a fresh mirror) or
        /// the region's chunk count (a mirror resuming).
        public var hashedChunks: UInt64
        public init(name: String, size: UInt64, chunkSize: UInt64, mode: Mode, hashedChunks: UInt64 = 0) {
            self.name = name; self.size = size; self.chunkSize = chunkSize; self.mode = mode
            self.hashedChunks = hashedChunks
        }
    }

    public static let protocolVersion: UInt64 = 1

    enum TypeCode: UInt8 {
        case hello = 0x01, catalog = 0x02, subscribe = 0x03, have = 0x04
        case write = 0x10, dirty = 0x11, ack = 0x12, synced = 0x13
        case read = 0x20, data = 0x21
        case echo = 0x30
        case error = 0x3f
    }
}

/// Every bound a decoder applies before it trusts a peer's number.
public enum FrameLimits {
    /// Largest payload of any frame: one maximal chunk plus its header fields.
    public static let maxPayload = (1 << 20) + 64
    /// Region and peer names, in UTF-8 bytes.
    public static let maxName = 255
    public static let maxCatalogEntries = 4096
    /// Chunks listed in one DIRTY frame.
    public static let maxDirtyChunks = 1 << 17
    /// Chunks asked for in one READ.
    public static let maxReadChunks: UInt64 = 256
    /// Chunk hashes in one HAVE frame (8 bytes each).
    public static let maxHashesPerFrame = 65536
    /// ERROR frame messages, in UTF-8 bytes.
    public static let maxMessage = 1024
}

extension Frame {
    /// The frame's name as docs/PROTOCOL.md writes it.
    public var name: String {
        switch self {
        case .hello: "HELLO"
        case .catalog: "CATALOG"
        case .subscribe: "SUBSCRIBE"
        case .have: "HAVE"
        case .synced: "SYNCED"
        case .write: "WRITE"
        case .dirty: "DIRTY"
        case .ack: "ACK"
        case .read: "READ"
        case .data: "DATA"
        case .echo: "ECHO"
        case .error: "ERROR"
        }
    }

    /// Whether a peer may send this frame as 0-RTT early data, which anyone
    /// who recorded the flight can replay to the exporter. Only HELLO: it
    /// asks for the exporter's HELLO and CATALOG and changes nothing, so
    /// running it twice is the same as once. SUBSCRIBE changes no memory
    /// either, but it starts a whole-region transfer and per-mirror state;
    /// it waits for the handshake (docs/PROTOCOL.md §6).
    public var mayArriveAsEarlyData: Bool {
        if case .hello = self { return true }
        return false
    }
}
