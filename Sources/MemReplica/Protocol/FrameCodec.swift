import MemReplicaTransportCore
/// Encodes frames and decodes them from a byte stream, incrementally and
/// with hard limits: a length over `FrameLimits.maxPayload` is refused as
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

extension Frame {
    /// Wire bytes of this frame. Encoding checks the same limits decoding
    /// does, so we never send what a peer must refuse.
    public func encoded() throws(ProtocolViolation) -> [UInt8] {
        // Bulk frames: header fields, then the bytes appended once into the
        // output (a chunk is copied once here, not twice).
        switch self {
        case .write(let chunk, let version, let bytes):
            var fields: [UInt8] = []
            VarInt.encode(chunk, into: &fields)
            VarInt.encode(version, into: &fields)
            return try Self.bulk(.write, fields: fields, bytes: bytes)
        case .data(let first, let bytes):
            var fields: [UInt8] = []
            VarInt.encode(first, into: &fields)
            return try Self.bulk(.data, fields: fields, bytes: bytes)
        case .echo(let bytes):
            return try Self.bulk(.echo, fields: [], bytes: bytes)
        default:
            break
        }
        var payload: [UInt8] = []
        let type: TypeCode
        switch self {
        case .hello(let h):
            type = .hello
            VarInt.encode(h.protocolVersion, into: &payload)
            try putString(h.peerName, limit: FrameLimits.maxName, into: &payload)
            VarInt.encode(h.capabilities, into: &payload)
        case .catalog(let entries):
            type = .catalog
            guard entries.count <= FrameLimits.maxCatalogEntries else {
                throw ProtocolViolation(.frameTooLarge, "\(entries.count) catalog entries (limit \(FrameLimits.maxCatalogEntries))")
            }
            VarInt.encode(UInt64(entries.count), into: &payload)
            for e in entries {
                try putString(e.name, limit: FrameLimits.maxName, into: &payload)
                VarInt.encode(e.size, into: &payload)
                VarInt.encode(e.chunkSize, into: &payload)
                try putString(e.identity.id, limit: FrameLimits.maxRegionID, into: &payload)
                VarInt.encode(e.identity.generation, into: &payload)
                // 0 names: any peer the CA signed (an empty list is not a rule).
                let allowed = e.allowedPeers ?? []
                guard allowed.count <= FrameLimits.maxAllowedPeers, e.allowedPeers.map({ !$0.isEmpty }) ?? true else {
                    throw ProtocolViolation(.frameTooLarge, "allow list of \(allowed.count) names (1 to \(FrameLimits.maxAllowedPeers))")
                }
                VarInt.encode(UInt64(allowed.count), into: &payload)
                for name in allowed { try putString(name, limit: FrameLimits.maxName, into: &payload) }
            }
        case .subscribe(let s):
            type = .subscribe
            try putString(s.name, limit: FrameLimits.maxName, into: &payload)
            VarInt.encode(s.size, into: &payload)
            VarInt.encode(s.chunkSize, into: &payload)
            VarInt.encode(s.mode.rawValue, into: &payload)
            VarInt.encode(s.hashedChunks, into: &payload)
            guard s.hashKey.isEmpty || s.hashKey.count == ChunkHashKey.byteCount else {
                throw ProtocolViolation(.malformedFrame, "a hash key is \(ChunkHashKey.byteCount) bytes, not \(s.hashKey.count)")
            }
            VarInt.encode(UInt64(s.hashKey.count), into: &payload)
            payload.append(contentsOf: s.hashKey)
            try putString(s.knownRegionID, limit: FrameLimits.maxRegionID, into: &payload)
            VarInt.encode(s.knownGeneration, into: &payload)
        case .have(let first, let hashes):
            type = .have
            guard hashes.count <= FrameLimits.maxHashesPerFrame else {
                throw ProtocolViolation(.frameTooLarge, "\(hashes.count) hashes (limit \(FrameLimits.maxHashesPerFrame))")
            }
            VarInt.encode(first, into: &payload)
            payload.reserveCapacity(payload.count + hashes.count * ChunkHash.byteCount)
            for h in hashes { h.append(to: &payload) }
        case .synced(let version, let digest):
            type = .synced
            guard digest.isEmpty || digest.count == RegionDigest.byteCount else {
                throw ProtocolViolation(.malformedFrame, "a SYNCED digest is \(RegionDigest.byteCount) bytes, not \(digest.count)")
            }
            VarInt.encode(version, into: &payload)
            VarInt.encode(UInt64(digest.count), into: &payload)
            payload.append(contentsOf: digest)
        case .digestRead(let first, let count, let group):
            type = .digestRead
            try Self.checkDigestRead(count: count, group: group)
            VarInt.encode(first, into: &payload)
            VarInt.encode(count, into: &payload)
            VarInt.encode(group, into: &payload)
        case .digests(let first, let group, let digests):
            type = .digests
            guard digests.count % RegionDigest.byteCount == 0,
                  digests.count / RegionDigest.byteCount <= FrameLimits.maxDigestsPerFrame else {
                throw ProtocolViolation(.frameTooLarge, "DIGESTS of \(digests.count) bytes")
            }
            guard group >= 1, group <= FrameLimits.maxDigestGroup, group & (group - 1) == 0 else {
                throw ProtocolViolation(.malformedFrame, "digest group \(group) is not a power of two up to \(FrameLimits.maxDigestGroup)")
            }
            VarInt.encode(first, into: &payload)
            VarInt.encode(group, into: &payload)
            payload.append(contentsOf: digests)
        case .dirty(let epoch, let chunks):
            type = .dirty
            guard chunks.count <= FrameLimits.maxDirtyChunks else {
                throw ProtocolViolation(.frameTooLarge, "\(chunks.count) dirty chunks (limit \(FrameLimits.maxDirtyChunks))")
            }
            VarInt.encode(epoch, into: &payload)
            VarInt.encode(UInt64(chunks.count), into: &payload)
            // Ascending, as gaps: small numbers, and duplicates impossible.
            var previous: UInt64? = nil
            for c in chunks {
                if let p = previous, c <= p {
                    throw ProtocolViolation(.malformedFrame, "dirty chunks must be strictly ascending")
                }
                VarInt.encode(previous.map { c - $0 - 1 } ?? c, into: &payload)
                previous = c
            }
        case .write, .data, .echo:
            preconditionFailure("bulk frames are encoded above")
        case .ack(let version):
            type = .ack
            VarInt.encode(version, into: &payload)
        case .read(let first, let count):
            type = .read
            guard count >= 1, count <= FrameLimits.maxReadChunks else {
                throw ProtocolViolation(.frameTooLarge, "READ of \(count) chunks (1 to \(FrameLimits.maxReadChunks))")
            }
            VarInt.encode(first, into: &payload)
            VarInt.encode(count, into: &payload)
        case .error(let code, let message):
            type = .error
            VarInt.encode(code, into: &payload)
            try putString(Self.cut(message, toUTF8Bytes: FrameLimits.maxMessage), limit: FrameLimits.maxMessage, into: &payload)
        }
        guard payload.count <= FrameLimits.maxPayload else {
            throw ProtocolViolation(.frameTooLarge, "payload of \(payload.count) bytes (limit \(FrameLimits.maxPayload))")
        }
        var out: [UInt8] = [type.rawValue]
        out.reserveCapacity(payload.count + 9)
        VarInt.encode(UInt64(payload.count), into: &out)
        out.append(contentsOf: payload)
        return out
    }

    /// A DIGEST_READ asks for at most `maxDigestsPerFrame` digests, each of a
    /// power-of-two group of chunks.
    static func checkDigestRead(count: UInt64, group: UInt64) throws(ProtocolViolation) {
        guard group >= 1, group <= FrameLimits.maxDigestGroup, group & (group - 1) == 0 else {
            throw ProtocolViolation(.malformedFrame, "digest group \(group) is not a power of two up to \(FrameLimits.maxDigestGroup)")
        }
        guard count >= 1, (count - 1) / group < UInt64(FrameLimits.maxDigestsPerFrame) else {
            throw ProtocolViolation(.frameTooLarge, "DIGEST_READ of \(count) chunks in groups of \(group) "
                                    + "(1 to \(FrameLimits.maxDigestsPerFrame) digests)")
        }
    }

    private static func bulk(_ type: TypeCode, fields: [UInt8], bytes: [UInt8]) throws(ProtocolViolation) -> [UInt8] {
        var out = try bulkHeader(type, fields: fields, byteCount: bytes.count)
        out.append(contentsOf: bytes)
        return out
    }

    /// Type, length and fields of a bulk frame whose `byteCount` bytes follow.
    private static func bulkHeader(_ type: TypeCode, fields: [UInt8], byteCount: Int) throws(ProtocolViolation) -> [UInt8] {
        let length = fields.count + byteCount
        guard length <= FrameLimits.maxPayload else {
            throw ProtocolViolation(.frameTooLarge, "payload of \(length) bytes (limit \(FrameLimits.maxPayload))")
        }
        var out: [UInt8] = [type.rawValue]
        out.reserveCapacity(length + 9)
        VarInt.encode(UInt64(length), into: &out)
        out.append(contentsOf: fields)
        return out
    }

    /// The bytes of a DATA frame that precede the chunk bytes it carries.
    public static func dataHeader(firstChunk: UInt64, byteCount: Int) throws(ProtocolViolation) -> [UInt8] {
        var fields: [UInt8] = []
        VarInt.encode(firstChunk, into: &fields)
        return try bulkHeader(.data, fields: fields, byteCount: byteCount)
    }

    /// The bytes of a WRITE frame that precede its chunk bytes, so a primary
    /// can send the chunk straight from the mapping with one copy.
    public static func writeHeader(chunk: UInt64, version: UInt64, byteCount: Int) throws(ProtocolViolation) -> [UInt8] {
        var fields: [UInt8] = []
        VarInt.encode(chunk, into: &fields)
        VarInt.encode(version, into: &fields)
        return try bulkHeader(.write, fields: fields, byteCount: byteCount)
    }

    /// `message` cut to at most `limit` UTF-8 bytes, at a character
    /// boundary: one that fits is sent whole (so a decoded ERROR encodes to
    /// the same frame), a longer one loses only its end.
    static func cut(_ message: String, toUTF8Bytes limit: Int) -> String {
        let utf8 = Array(message.utf8)
        guard utf8.count > limit else { return message }
        var end = limit
        // Back off continuation bytes (10xxxxxx) to the start of the character.
        while end > 0 && utf8[end] & 0xc0 == 0x80 { end -= 1 }
        return String(decoding: utf8[..<end], as: UTF8.self)
    }

    private func putString(_ s: String, limit: Int, into out: inout [UInt8]) throws(ProtocolViolation) {
        let utf8 = Array(s.utf8)
        guard utf8.count <= limit else {
            throw ProtocolViolation(.frameTooLarge, "string of \(utf8.count) bytes (limit \(limit))")
        }
        VarInt.encode(UInt64(utf8.count), into: &out)
        out.append(contentsOf: utf8)
    }
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
            return .catalog(entries)
        case .subscribe:
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
            return .subscribe(.init(name: name, size: size, chunkSize: chunkSize, mode: mode, hashedChunks: hashed,
                                    hashKey: key, knownRegionID: try string("region id", limit: FrameLimits.maxRegionID),
                                    knownGeneration: try varint("generation")))
        case .have:
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
        case .write:
            let chunk = try varint("chunk"), version = try varint("version")
            return .write(chunk: chunk, version: version, bytes: rest())
        case .dirty:
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
        case .ack:
            return .ack(version: try varint("version"))
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
        }
    }
}
