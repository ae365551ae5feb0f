/// One message of the wire protocol: `type (u8) · length (varint) · payload`.
/// docs/PROTOCOL.md is the normative description; the codec
/// (`Frame.encoded()`, `FrameDecoder`) enforces the limits in
/// `FrameLimits` on every frame in both directions.
public enum Frame: Equatable, Sendable {
    /// 0x01, both ways first on the control stream.
    case hello(Hello)
    /// 0x02, exporting side → peer: the regions it offers.
    case catalog([CatalogEntry])
    /// 0x03, mirror → exporter: start replicating one region.
    case subscribe(Subscribe)
    /// 0x04, mirror → exporter after SUBSCRIBE: hashes of the chunks the
    /// mirror already holds, so only different ones are sent (resume).
    case have(firstChunk: UInt64, hashes: [ChunkHash])
    /// 0x13, primary → replica: the initial pass is complete at `version`;
    /// every chunk not sent in it was already identical. `digest` (eager
    /// mirrors; empty for lazy ones) is `RegionDigest.synced` over what the
    /// replica must now hold, so it can check itself.
    case synced(version: UInt64, digest: [UInt8] = [])
    /// 0x10, primary → replica: the bytes of one chunk at a version.
    case write(chunk: UInt64, version: UInt64, bytes: [UInt8])
    /// 0x14, primary → replica, when the mirror's HELLO offered
    /// `WireCapabilities.pages`: one chunk as the pages that changed since
    /// what the replica holds, zero pages named, not sent (`Pages`).
    case pages(Pages)
    /// 0x15, exporter → mirror, first on an eager region stream whose
    /// mirror offered `WireCapabilities.lanes`: the initial pass also
    /// travels on `count - 1` lane streams the mirror opens, each naming
    /// `token` in LANE (`PassLanes`).
    case lanes(count: UInt64, token: [UInt8])
    /// 0x16, mirror → exporter, the only frame a lane stream carries that
    /// way: it joins the subscription LANES named with `token`.
    case lane(token: [UInt8], index: UInt64)
    /// 0x17, exporter → mirror: a later pass that went over lanes is
    /// complete at `version`; what follows on the region stream comes after
    /// it (for the initial pass SYNCED says so).
    case lanesEnd(version: UInt64)
    /// 0x11, primary → replica: these chunks changed (lazy mirrors pull).
    case dirty(epoch: UInt64, chunks: [UInt64])
    /// 0x12, replica → primary: everything up to `version` is applied.
    case ack(version: UInt64)
    /// 0x20, replica → primary: send chunks first..<first+count.
    case read(firstChunk: UInt64, count: UInt64)
    /// 0x21, answer to READ: consecutive chunks' bytes.
    case data(firstChunk: UInt64, bytes: [UInt8])
    /// 0x22, replica → primary on a verify stream: SHA-256 digests of
    /// chunks first..<first+count, one per `group` consecutive chunks.
    case digestRead(firstChunk: UInt64, count: UInt64, group: UInt64)
    /// 0x23, answer to DIGEST_READ: 32-byte digests, the first covering
    /// chunks first..<first+group, the next the following group, and so on.
    case digests(firstChunk: UInt64, group: UInt64, digests: [UInt8])
    /// 0x30, either way: a diagnostic; the receiver sends the same bytes
    /// back on the same stream (what `memreplica ping` measures).
    case echo([UInt8])
    /// 0x3f, either way: why the sender is about to end this stream.
    case error(code: UInt64, message: String)

    /// 0x40, source → destination, first on a migration stream: "I own this
    /// region and will hand it to you" (docs/MIGRATION.md).
    case migrate(Migrate)
    /// 0x41, destination → source: it mirrors the region at `generation`
    /// and has applied the source's WRITEs up to `appliedVersion`.
    /// `holdsCopy` false: it holds nothing of the region (a post-copy
    /// destination that did not mirror it), so every chunk is missing there.
    case migrateReady(generation: UInt64, appliedVersion: UInt64, holdsCopy: Bool = true)
    /// 0x42, source → destination: the commit request. Writers are frozen.
    /// Pre-copy: every change up to `finalVersion` is sent; `digest` is
    /// `RegionDigest.synced` of the frozen region under MIGRATE's hash key,
    /// or empty when it follows the commit in HANDOVER_CHECK (`--verify after`).
    /// Post-copy (`postcopy`, no digest): the DIRTY frames before it on the
    /// migration stream name every chunk the destination's copy may hold
    /// stale; WRITEs up to `finalVersion` must be applied before the
    /// destination drops those and pulls them from the frozen source.
    case handover(generation: UInt64, finalVersion: UInt64, postcopy: Bool = false, digest: [UInt8])
    /// 0x44, source → destination after HANDED_OVER, when HANDOVER carried
    /// no digest: the frozen region's digest, checked against the copy as
    /// it was committed; answered with HANDED_OVER again, or ERROR
    /// `handover_mismatch`.
    case handoverCheck(digest: [UInt8])
    /// 0x43, destination → source: it owns the region at `generation` now.
    case handedOver(generation: UInt64)

    public struct Migrate: Equatable, Sendable {
        public var name: String
        public var size: UInt64
        public var chunkSize: UInt64
        /// The region's id and the source's owner generation.
        public var identity: RegionIdentity
        public var mode: MigrationMode
        /// The key (16 bytes) HANDOVER's digest is computed under: the
        /// destination hashes its copy with it while the source is frozen.
        public var hashKey: [UInt8]
        /// 0 for a new migration. A source whose connection broke after it
        /// sent HANDOVER asks again with the generation it offered: the
        /// answer is HANDED_OVER if the destination committed, else an ERROR.
        public var committing: UInt64
        /// The port the source listens on (its address as the destination
        /// sees the connection, with this port): where a destination that
        /// does not mirror the region yet starts a mirror from (0: unknown).
        public var sourcePort: UInt64
        public init(name: String, size: UInt64, chunkSize: UInt64, identity: RegionIdentity, mode: MigrationMode,
                    hashKey: [UInt8], committing: UInt64 = 0, sourcePort: UInt64 = 0) {
            self.name = name; self.size = size; self.chunkSize = chunkSize; self.identity = identity
            self.mode = mode; self.hashKey = hashKey; self.committing = committing; self.sourcePort = sourcePort
        }
    }

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
        /// The region's id and owner generation (`RegionIdentity`).
        public var identity: RegionIdentity
        /// Certificate common names that may mirror or read the region, nil
        /// for any peer the CA signed. A replica serves the region under
        /// this rule (or a narrower one of its own), never a wider one.
        public var allowedPeers: [String]?
        public init(name: String, size: UInt64, chunkSize: UInt64, identity: RegionIdentity,
                    allowedPeers: [String]? = nil) {
            self.name = name; self.size = size; self.chunkSize = chunkSize; self.identity = identity
            self.allowedPeers = allowedPeers
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

            /// DIGEST_READ → DIGESTS, for `memreplica verify`.
            case verify = 4

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
        /// The key (16 bytes) both sides hash chunks with on this
        /// subscription (HAVE, SYNCED's digest): chosen afresh by the mirror,
        /// known only inside TLS. Empty on reads, pull and verify streams.
        public var hashKey: [UInt8]
        /// The region identity the mirror last followed ("" and 0: none).
        /// An exporter whose generation of that region is older refuses with
        /// `stale_generation`: a newer owner exists.
        public var knownRegionID: String
        public var knownGeneration: UInt64
        public init(name: String, size: UInt64, chunkSize: UInt64, mode: Mode, hashedChunks: UInt64 = 0,
                    hashKey: [UInt8] = [], knownRegionID: String = "", knownGeneration: UInt64 = 0) {
            self.name = name; self.size = size; self.chunkSize = chunkSize; self.mode = mode
            self.hashedChunks = hashedChunks; self.hashKey = hashKey
            self.knownRegionID = knownRegionID; self.knownGeneration = knownGeneration
        }
    }

    /// 2: region identity and allow lists in CATALOG, keyed 128-bit chunk
    /// hashes (HAVE), SYNCED digests, verify streams. Version 1 peers get
    /// `unsupported_version`.
    public static let protocolVersion: UInt64 = 2

    enum TypeCode: UInt8 {
        case hello = 0x01, catalog = 0x02, subscribe = 0x03, have = 0x04
        case write = 0x10, dirty = 0x11, ack = 0x12, synced = 0x13, pages = 0x14, lanes = 0x15, lane = 0x16, lanesEnd = 0x17
        case read = 0x20, data = 0x21, digestRead = 0x22, digests = 0x23
        case echo = 0x30
        case error = 0x3f
        case migrate = 0x40, migrateReady = 0x41, handover = 0x42, handedOver = 0x43, handoverCheck = 0x44
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
    /// Chunk hashes in one HAVE frame (16 bytes each).
    public static let maxHashesPerFrame = 65536
    /// Names in one catalog entry's allow list.
    public static let maxAllowedPeers = 256
    /// A region id, in UTF-8 bytes.
    public static let maxRegionID = 64
    /// Digests in one DIGESTS frame (32 bytes each), and asked for by one
    /// DIGEST_READ.
    public static let maxDigestsPerFrame = 32768
    /// Chunks one digest may cover (a power of two).
    public static let maxDigestGroup: UInt64 = 1 << 20
    /// Pages in one PAGES frame: a 1 MiB chunk of 4 KiB pages.
    public static let maxPagesPerChunk = (1 << 20) / PageLayout.pageSize
    /// ERROR frame messages, in UTF-8 bytes.
    public static let maxMessage = 1024
    /// Streams one initial pass may be spread over (LANES), its region
    /// stream included.
    public static let maxLanes: UInt64 = 16
    /// LANES and LANE tokens, in bytes.
    public static let laneTokenBytes = 16
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
        case .pages: "PAGES"
        case .lanes: "LANES"
        case .lane: "LANE"
        case .lanesEnd: "LANES_END"
        case .dirty: "DIRTY"
        case .ack: "ACK"
        case .read: "READ"
        case .data: "DATA"
        case .digestRead: "DIGEST_READ"
        case .digests: "DIGESTS"
        case .echo: "ECHO"
        case .error: "ERROR"
        case .migrate: "MIGRATE"
        case .migrateReady: "MIGRATE_READY"
        case .handover: "HANDOVER"
        case .handedOver: "HANDED_OVER"
        case .handoverCheck: "HANDOVER_CHECK"
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
