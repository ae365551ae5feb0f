import MemReplicaTransportCore

/// Decodes frames from a byte stream, incrementally and with hard
/// limits: a length over `FrameLimits.maxPayload` is refused as
/// soon as its header arrives, before any payload is buffered.
public struct FrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var consumed = 0

    public init() {}

    /// Bytes received but not yet decoded into a frame.
    public var pendingBytes: Int { buffer.count - consumed }

    public mutating func append(_ bytes: [UInt8]) {
        // Nothing pending: adopt the array instead of copying it.
        if consumed == buffer.count {
            buffer = bytes
            consumed = 0
            return
        }
        appendCopying(bytes)
    }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        appendCopying(bytes)
    }

    private mutating func appendCopying(_ bytes: some Sequence<UInt8>) {
        if consumed > 0 && consumed >= buffer.count / 2 {
            buffer.removeFirst(consumed)
            consumed = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete frame, nil when more bytes are needed.
    public mutating func next() throws(ProtocolViolation) -> Frame? {
        var offset = consumed
        guard offset < buffer.count else { return nil }
        let typeByte = buffer[offset]
        offset += 1
        guard let length = VarInt.decode(buffer, at: &offset) else { return nil }
        guard length <= UInt64(FrameLimits.maxPayload) else {
            throw ProtocolViolation(.frameTooLarge, "frame type 0x\(String(typeByte, radix: 16)) declares \(length) bytes (limit \(FrameLimits.maxPayload))")
        }
        guard let type = Frame.TypeCode(rawValue: typeByte) else {
            throw ProtocolViolation(.unknownFrameType, "frame type 0x\(String(typeByte, radix: 16))")
        }
        let end = offset + Int(length)
        guard end <= buffer.count else { return nil }
        var reader = PayloadReader(bytes: buffer[offset..<end], type: type)
        let frame = try reader.frame()
        try reader.expectEnd()
        consumed = end
        // Frames own copies of their bytes: a stream gone idle keeps no
        // buffer (it was up to a transport read's 256 KiB, per stream).
        if consumed == buffer.count {
            buffer = []
            consumed = 0
        }
        return frame
    }

    /// Wire size of the frame in progress once its type and length have
    /// arrived (nil before, or when `next()` will refuse it).
    public var nextFrameSize: Int? {
        var offset = consumed
        guard offset < buffer.count else { return nil }
        offset += 1
        guard let length = VarInt.decode(buffer, at: &offset), length <= UInt64(FrameLimits.maxPayload) else { return nil }
        return offset - consumed + Int(length)
    }

    /// Removes and returns the bytes not yet decoded.
    public mutating func takePending() -> [UInt8] {
        defer { buffer = []; consumed = 0 }
        return Array(buffer[consumed...])
    }

    /// True when the stream may end here (no partial frame buffered).
    public var atFrameBoundary: Bool { pendingBytes == 0 }
}

/// Reads one frame's payload; every field must lie inside it.
private struct PayloadReader {
    let bytes: ArraySlice<UInt8>
    let type: Frame.TypeCode
    var offset = 0

    init(bytes: ArraySlice<UInt8>, type: Frame.TypeCode) {
        self.bytes = bytes
        self.type = type
    }

    mutating func varint(_ field: String) throws(ProtocolViolation) -> UInt64 {
        guard let v = VarInt.decode(bytes, at: &offset) else {
            throw ProtocolViolation(.malformedFrame, "\(type) frame ends inside \(field)")
        }
        return v
    }

    /// A varint that must be 0 or 1.
    mutating func flag(_ field: String) throws(ProtocolViolation) -> Bool {
        let v = try varint(field)
        guard v <= 1 else { throw ProtocolViolation(.malformedFrame, "\(type) \(field) is \(v), not 0 or 1") }
        return v == 1
    }

    mutating func string(_ field: String, limit: Int) throws(ProtocolViolation) -> String {
        let n = try varint(field)
        guard n <= UInt64(limit) else {
            throw ProtocolViolation(.frameTooLarge, "\(type) \(field) of \(n) bytes (limit \(limit))")
        }
        guard offset + Int(n) <= bytes.count else {
            throw ProtocolViolation(.malformedFrame, "\(type) frame ends inside \(field)")
        }
        let start = bytes.startIndex + offset
        offset += Int(n)
        guard let s = String(validating: bytes[start..<start + Int(n)], as: UTF8.self) else {
            throw ProtocolViolation(.malformedFrame, "\(type) \(field) is not UTF-8")
        }
        return s
    }

    mutating func raw(_ field: String, count: Int) throws(ProtocolViolation) -> [UInt8] {
        guard count <= bytes.count - offset else {
            throw ProtocolViolation(.malformedFrame, "\(type) frame ends inside \(field)")
        }
        let start = bytes.startIndex + offset
        offset += count
        return Array(bytes[start..<start + count])
    }

    mutating func rest() -> [UInt8] {
        defer { offset = bytes.count }
        return Array(bytes[(bytes.startIndex + offset)...])
    }

    func expectEnd() throws(ProtocolViolation) {
        guard offset == bytes.count else {
            throw ProtocolViolation(.malformedFrame, "\(bytes.count - offset) stray bytes after a \(type) frame")
        }
    }

    mutating func frame() throws(ProtocolViolation) -> Frame {
        switch type {
        case .hello:
            return .hello(.init(protocolVersion: try varint("version"), peerName: try string("peer name", limit: FrameLimits.maxName),
                                capabilities: try varint("capabilities")))
        case .catalog:
            return .catalog(try catalogEntries())
        case .subscribe:
            return .subscribe(try subscription())
        case .have:
            return try have()
        case .synced, .digestRead, .digests:
            return try integrityFrame()
        case .write:
            let chunk = try varint("chunk"), version = try varint("version")
            return .write(chunk: chunk, version: version, bytes: rest())
        case .pages:
            return .pages(try pages())
        case .dirty:
            return try dirty()
        case .ack:
            return .ack(version: try varint("version"))
        case .lanes:
            let count = try varint("count")
            guard count >= 2, count <= FrameLimits.maxLanes else {
                throw ProtocolViolation(.frameTooLarge, "LANES of \(count) streams (2 to \(FrameLimits.maxLanes))")
            }
            return .lanes(count: count, token: try raw("token", count: FrameLimits.laneTokenBytes))
        case .lane:
            let token = try raw("token", count: FrameLimits.laneTokenBytes)
            let index = try varint("index")
            guard index >= 1, index < FrameLimits.maxLanes else {
                throw ProtocolViolation(.malformedFrame, "LANE index \(index) (1 to \(FrameLimits.maxLanes - 1))")
            }
            return .lane(token: token, index: index)
        case .lanesEnd:
            return .lanesEnd(version: try varint("version"))
        case .read:
            let first = try varint("first chunk"), count = try varint("count")
            guard count >= 1, count <= FrameLimits.maxReadChunks else {
                throw ProtocolViolation(.frameTooLarge, "READ of \(count) chunks (1 to \(FrameLimits.maxReadChunks))")
            }
            return .read(firstChunk: first, count: count)
        case .data:
            return .data(firstChunk: try varint("first chunk"), bytes: rest())
        case .echo:
            return .echo(rest())
        case .error:
            return .error(code: try varint("code"), message: try string("message", limit: FrameLimits.maxMessage))
        case .migrate:
            return .migrate(try migration())
        case .migrateReady:
            let generation = try varint("generation"), applied = try varint("applied version")
            return .migrateReady(generation: generation, appliedVersion: applied, holdsCopy: try flag("holds copy"))
        case .handover:
            let generation = try varint("generation"), finalVersion = try varint("final version")
            let postcopy = try flag("post-copy")
            let length = try varint("digest length")
            guard length == 0 || length == UInt64(RegionDigest.byteCount), !postcopy || length == 0 else {
                throw ProtocolViolation(.malformedFrame, "a HANDOVER digest is \(RegionDigest.byteCount) bytes or none "
                                        + "(none after post-copy), not \(length)")
            }
            return .handover(generation: generation, finalVersion: finalVersion, postcopy: postcopy,
                             digest: try raw("digest", count: Int(length)))
        case .handoverCheck:
            return .handoverCheck(digest: try raw("digest", count: RegionDigest.byteCount))
        case .handedOver:
            return .handedOver(generation: try varint("generation"))
        }
    }

    private mutating func pages() throws(ProtocolViolation) -> Frame.Pages {
        let chunk = try varint("chunk"), version = try varint("version")
        let count = try varint("page count")
        guard count >= 1, count <= UInt64(FrameLimits.maxPagesPerChunk) else {
            throw ProtocolViolation(.frameTooLarge, "PAGES of \(count) pages (1 to \(FrameLimits.maxPagesPerChunk))")
        }
        let maskBytes = Frame.Pages.maskBytes(pages: Int(count))
        let present = try raw("present mask", count: maskBytes), zero = try raw("zero mask", count: maskBytes)
        for i in 0..<maskBytes where present[i] & zero[i] != 0 {
            throw ProtocolViolation(.malformedFrame, "PAGES names a page both present and zero")
        }
        // Bits past the last page must be clear.
        let spare = UInt8(truncatingIfNeeded: 0xff << (count % 8)) & (count % 8 == 0 ? 0 : 0xff)
        guard (present[maskBytes - 1] | zero[maskBytes - 1]) & spare == 0 else {
            throw ProtocolViolation(.malformedFrame, "PAGES marks pages past its \(count)")
        }
        let rawCodec = try varint("codec")
        guard rawCodec <= UInt64(UInt8.max), let codec = PageCodec(rawValue: UInt8(rawCodec)) else {
            throw ProtocolViolation(.malformedFrame, "PAGES codec \(rawCodec) is not 0, 1 or 2")
        }
        let checkLength = try varint("check length")
        guard checkLength == 0 || checkLength == UInt64(ChunkHash.byteCount) else {
            throw ProtocolViolation(.malformedFrame, "a PAGES check is \(ChunkHash.byteCount) bytes or none, not \(checkLength)")
        }
        let check = checkLength == 0 ? nil : ChunkHash(bigEndian: try raw("check", count: ChunkHash.byteCount))
        return Frame.Pages(chunk: chunk, version: version, pageCount: Int(count), present: present, zero: zero, codec: codec,
                           check: check, payload: rest())
    }

    private mutating func migration() throws(ProtocolViolation) -> Frame.Migrate {
        let name = try string("region name", limit: FrameLimits.maxName)
        let size = try varint("size"), chunkSize = try varint("chunk size")
        let identity = RegionIdentity(id: try string("region id", limit: FrameLimits.maxRegionID),
                                      generation: try varint("generation"))
        let rawMode = try varint("mode")
        guard let mode = MigrationMode(wireValue: rawMode) else {
            throw ProtocolViolation(.malformedFrame, "unknown migration mode \(rawMode)")
        }
        let key = try raw("hash key", count: ChunkHashKey.byteCount)
        let committing = try varint("committing generation")
        let port = try varint("source port")
        guard port <= UInt64(UInt16.max) else { throw ProtocolViolation(.malformedFrame, "source port \(port)") }
        return .init(name: name, size: size, chunkSize: chunkSize, identity: identity, mode: mode, hashKey: key,
                     committing: committing, sourcePort: port)
    }

    private mutating func catalogEntries() throws(ProtocolViolation) -> [Frame.CatalogEntry] {
        let count = try varint("entry count")
        guard count <= UInt64(FrameLimits.maxCatalogEntries) else {
            throw ProtocolViolation(.frameTooLarge, "\(count) catalog entries (limit \(FrameLimits.maxCatalogEntries))")
        }
        var entries: [Frame.CatalogEntry] = []
        for _ in 0..<count {
            let name = try string("region name", limit: FrameLimits.maxName)
            let size = try varint("size"), chunkSize = try varint("chunk size")
            let identity = RegionIdentity(id: try string("region id", limit: FrameLimits.maxRegionID),
                                          generation: try varint("generation"))
            let allowCount = try varint("allow count")
            guard allowCount <= UInt64(FrameLimits.maxAllowedPeers) else {
                throw ProtocolViolation(.frameTooLarge, "allow list of \(allowCount) names (limit \(FrameLimits.maxAllowedPeers))")
            }
            var allowed: [String] = []
            for _ in 0..<allowCount { allowed.append(try string("allowed peer", limit: FrameLimits.maxName)) }
            entries.append(.init(name: name, size: size, chunkSize: chunkSize, identity: identity,
                                 allowedPeers: allowCount == 0 ? nil : allowed))
        }
        return entries
    }

    private mutating func subscription() throws(ProtocolViolation) -> Frame.Subscribe {
        let name = try string("region name", limit: FrameLimits.maxName)
        let size = try varint("size"), chunkSize = try varint("chunk size")
        let rawMode = try varint("mode")
        guard let mode = Frame.Subscribe.Mode(rawValue: rawMode) else {
            throw ProtocolViolation(.malformedFrame, "unknown subscribe mode \(rawMode)")
        }
        let hashed = try varint("hashed chunks")
        let keyLength = try varint("hash key length")
        guard keyLength == 0 || keyLength == UInt64(ChunkHashKey.byteCount) else {
            throw ProtocolViolation(.malformedFrame, "a hash key is \(ChunkHashKey.byteCount) bytes, not \(keyLength)")
        }
        let key = try raw("hash key", count: Int(keyLength))
        return .init(name: name, size: size, chunkSize: chunkSize, mode: mode, hashedChunks: hashed,
                     hashKey: key, knownRegionID: try string("region id", limit: FrameLimits.maxRegionID),
                     knownGeneration: try varint("generation"))
    }

    private mutating func have() throws(ProtocolViolation) -> Frame {
        let first = try varint("first chunk")
        let body = rest()
        let size = ChunkHash.byteCount
        guard body.count % size == 0 else {
            throw ProtocolViolation(.malformedFrame, "HAVE holds \(body.count) bytes of hashes, not a multiple of \(size)")
        }
        guard body.count / size <= FrameLimits.maxHashesPerFrame else {
            throw ProtocolViolation(.frameTooLarge, "\(body.count / size) hashes (limit \(FrameLimits.maxHashesPerFrame))")
        }
        var hashes: [ChunkHash] = []
        hashes.reserveCapacity(body.count / size)
        for i in stride(from: 0, to: body.count, by: size) {
            hashes.append(ChunkHash(bigEndian: body[i..<i + size]))
        }
        return .have(firstChunk: first, hashes: hashes)
    }

    /// SYNCED, DIGEST_READ and DIGESTS: the frames that check a copy.
    private mutating func integrityFrame() throws(ProtocolViolation) -> Frame {
        switch type {
        case .synced:
            let version = try varint("version")
            let digestLength = try varint("digest length")
            guard digestLength == 0 || digestLength == UInt64(RegionDigest.byteCount) else {
                throw ProtocolViolation(.malformedFrame, "a SYNCED digest is \(RegionDigest.byteCount) bytes, not \(digestLength)")
            }
            return .synced(version: version, digest: try raw("digest", count: Int(digestLength)))
        case .digestRead:
            let first = try varint("first chunk"), count = try varint("count"), group = try varint("group")
            try Frame.checkDigestRead(count: count, group: group)
            return .digestRead(firstChunk: first, count: count, group: group)
        case .digests:
            let first = try varint("first chunk"), group = try varint("group")
            guard group >= 1, group <= FrameLimits.maxDigestGroup, group & (group - 1) == 0 else {
                throw ProtocolViolation(.malformedFrame, "digest group \(group) is not a power of two up to \(FrameLimits.maxDigestGroup)")
            }
            let body = rest()
            guard body.count % RegionDigest.byteCount == 0 else {
                throw ProtocolViolation(.malformedFrame, "DIGESTS holds \(body.count) bytes, not a multiple of \(RegionDigest.byteCount)")
            }
            guard body.count / RegionDigest.byteCount <= FrameLimits.maxDigestsPerFrame else {
                throw ProtocolViolation(.frameTooLarge, "\(body.count / RegionDigest.byteCount) digests (limit \(FrameLimits.maxDigestsPerFrame))")
            }
            return .digests(firstChunk: first, group: group, digests: body)
        default:
            preconditionFailure("\(type) is not an integrity frame")
        }
    }

    private mutating func dirty() throws(ProtocolViolation) -> Frame {
        let epoch = try varint("epoch")
        let count = try varint("chunk count")
        guard count <= UInt64(FrameLimits.maxDirtyChunks) else {
            throw ProtocolViolation(.frameTooLarge, "\(count) dirty chunks (limit \(FrameLimits.maxDirtyChunks))")
        }
        var chunks: [UInt64] = []
        chunks.reserveCapacity(Int(min(count, UInt64(bytes.count))))
        var previous: UInt64? = nil
        for _ in 0..<count {
            let gap = try varint("chunk")
            let (next, overflow) = previous.map { $0.addingReportingOverflow(gap &+ 1) } ?? (gap, false)
            guard !overflow, next <= VarInt.max else {
                throw ProtocolViolation(.malformedFrame, "dirty chunk index overflows")
            }
            chunks.append(next)
            previous = next
        }
        return .dirty(epoch: epoch, chunks: chunks)
    }
}
