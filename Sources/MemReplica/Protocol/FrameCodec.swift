import MemReplicaTransportCore
extension Frame {
    /// Wire bytes of this frame. Encoding checks the same limits decoding
    /// does, so we never send what a peer must refuse.
    public func encoded() throws(ProtocolViolation) -> [UInt8] {
        if let bulk = try bulkEncoded() { return bulk }
        var payload: [UInt8] = []
        let type = try encodePayload(into: &payload)
        guard payload.count <= FrameLimits.maxPayload else {
            throw ProtocolViolation(.frameTooLarge, "payload of \(payload.count) bytes (limit \(FrameLimits.maxPayload))")
        }
        var out: [UInt8] = [type.rawValue]
        out.reserveCapacity(payload.count + 9)
        VarInt.encode(UInt64(payload.count), into: &out)
        out.append(contentsOf: payload)
        return out
    }

    /// Bulk frames (WRITE, DATA, ECHO): header fields, then the bytes
    /// appended once into the output (a chunk is copied once here, not
    /// twice). Nil for every other frame.
    private func bulkEncoded() throws(ProtocolViolation) -> [UInt8]? {
        switch self {
        case .write(let chunk, let version, let bytes):
            var fields: [UInt8] = []
            VarInt.encode(chunk, into: &fields)
            VarInt.encode(version, into: &fields)
            return try Self.bulk(.write, fields: fields, bytes: bytes)
        case .pages(let p):
            return try Self.bulk(.pages, fields: p.headerFields(), bytes: p.payload)
        case .data(let first, let bytes):
            var fields: [UInt8] = []
            VarInt.encode(first, into: &fields)
            return try Self.bulk(.data, fields: fields, bytes: bytes)
        case .echo(let bytes):
            return try Self.bulk(.echo, fields: [], bytes: bytes)
        default:
            return nil
        }
    }

    /// Appends the payload of a frame that is not bulk; returns its type.
    private func encodePayload(into payload: inout [UInt8]) throws(ProtocolViolation) -> TypeCode {
        switch self {
        case .hello(let h):
            VarInt.encode(h.protocolVersion, into: &payload)
            try Self.putString(h.peerName, limit: FrameLimits.maxName, into: &payload)
            VarInt.encode(h.capabilities, into: &payload)
            return .hello
        case .catalog(let entries):
            try Self.encodeCatalog(entries, into: &payload)
            return .catalog
        case .subscribe(let s):
            try Self.encodeSubscribe(s, into: &payload)
            return .subscribe
        case .have(let first, let hashes):
            guard hashes.count <= FrameLimits.maxHashesPerFrame else {
                throw ProtocolViolation(.frameTooLarge, "\(hashes.count) hashes (limit \(FrameLimits.maxHashesPerFrame))")
            }
            VarInt.encode(first, into: &payload)
            payload.reserveCapacity(payload.count + hashes.count * ChunkHash.byteCount)
            for h in hashes { h.append(to: &payload) }
            return .have
        case .synced, .digestRead, .digests:
            return try encodeIntegrity(into: &payload)
        case .dirty(let epoch, let chunks):
            try Self.encodeDirty(epoch: epoch, chunks: chunks, into: &payload)
            return .dirty
        case .write, .pages, .data, .echo:
            preconditionFailure("bulk frames are encoded by bulkEncoded()")
        case .ack(let version):
            VarInt.encode(version, into: &payload)
            return .ack
        case .lanes(let count, let token):
            guard count >= 2, count <= FrameLimits.maxLanes else {
                throw ProtocolViolation(.frameTooLarge, "LANES of \(count) streams (2 to \(FrameLimits.maxLanes))")
            }
            try Self.checkLaneToken(token)
            VarInt.encode(count, into: &payload)
            payload.append(contentsOf: token)
            return .lanes
        case .lane(let token, let index):
            guard index >= 1, index < FrameLimits.maxLanes else {
                throw ProtocolViolation(.malformedFrame, "LANE index \(index) (1 to \(FrameLimits.maxLanes - 1))")
            }
            try Self.checkLaneToken(token)
            payload.append(contentsOf: token)
            VarInt.encode(index, into: &payload)
            return .lane
        case .lanesEnd(let version):
            VarInt.encode(version, into: &payload)
            return .lanesEnd
        case .read(let first, let count):
            guard count >= 1, count <= FrameLimits.maxReadChunks else {
                throw ProtocolViolation(.frameTooLarge, "READ of \(count) chunks (1 to \(FrameLimits.maxReadChunks))")
            }
            VarInt.encode(first, into: &payload)
            VarInt.encode(count, into: &payload)
            return .read
        case .error(let code, let message):
            VarInt.encode(code, into: &payload)
            try Self.putString(Self.cut(message, toUTF8Bytes: FrameLimits.maxMessage), limit: FrameLimits.maxMessage,
                               into: &payload)
            return .error
        case .migrate, .migrateReady, .handover, .handedOver, .handoverCheck:
            return try encodeMigration(into: &payload)
        }
    }

    private static func checkLaneToken(_ token: [UInt8]) throws(ProtocolViolation) {
        guard token.count == FrameLimits.laneTokenBytes else {
            throw ProtocolViolation(.malformedFrame, "a lane token is \(FrameLimits.laneTokenBytes) bytes, not \(token.count)")
        }
    }

    /// The hand-over frames (docs/MIGRATION.md).
    private func encodeMigration(into payload: inout [UInt8]) throws(ProtocolViolation) -> TypeCode {
        switch self {
        case .migrate(let m):
            try Self.putString(m.name, limit: FrameLimits.maxName, into: &payload)
            VarInt.encode(m.size, into: &payload)
            VarInt.encode(m.chunkSize, into: &payload)
            try Self.putString(m.identity.id, limit: FrameLimits.maxRegionID, into: &payload)
            VarInt.encode(m.identity.generation, into: &payload)
            VarInt.encode(m.mode.wireValue, into: &payload)
            guard m.hashKey.count == ChunkHashKey.byteCount else {
                throw ProtocolViolation(.malformedFrame, "a hash key is \(ChunkHashKey.byteCount) bytes, not \(m.hashKey.count)")
            }
            payload.append(contentsOf: m.hashKey)
            VarInt.encode(m.committing, into: &payload)
            guard m.sourcePort <= UInt64(UInt16.max) else {
                throw ProtocolViolation(.malformedFrame, "source port \(m.sourcePort)")
            }
            VarInt.encode(m.sourcePort, into: &payload)
            return .migrate
        case .migrateReady(let generation, let applied, let holdsCopy):
            VarInt.encode(generation, into: &payload)
            VarInt.encode(applied, into: &payload)
            VarInt.encode(holdsCopy ? 1 : 0, into: &payload)
            return .migrateReady
        case .handover(let generation, let finalVersion, let postcopy, let digest):
            guard digest.isEmpty || digest.count == RegionDigest.byteCount else {
                throw ProtocolViolation(.malformedFrame, "a HANDOVER digest is \(RegionDigest.byteCount) bytes or none, not \(digest.count)")
            }
            guard !postcopy || digest.isEmpty else {
                throw ProtocolViolation(.malformedFrame, "a post-copy HANDOVER carries no digest")
            }
            VarInt.encode(generation, into: &payload)
            VarInt.encode(finalVersion, into: &payload)
            VarInt.encode(postcopy ? 1 : 0, into: &payload)
            VarInt.encode(UInt64(digest.count), into: &payload)
            payload.append(contentsOf: digest)
            return .handover
        case .handoverCheck(let digest):
            guard digest.count == RegionDigest.byteCount else {
                throw ProtocolViolation(.malformedFrame, "a HANDOVER_CHECK digest is \(RegionDigest.byteCount) bytes, not \(digest.count)")
            }
            payload.append(contentsOf: digest)
            return .handoverCheck
        case .handedOver(let generation):
            VarInt.encode(generation, into: &payload)
            return .handedOver
        default:
            preconditionFailure("\(self) is not a hand-over frame")
        }
    }

    private static func encodeCatalog(_ entries: [CatalogEntry], into payload: inout [UInt8]) throws(ProtocolViolation) {
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
    }

    private static func encodeSubscribe(_ s: Subscribe, into payload: inout [UInt8]) throws(ProtocolViolation) {
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
    }

    /// The frames that check a copy: SYNCED's digest, DIGEST_READ, DIGESTS.
    private func encodeIntegrity(into payload: inout [UInt8]) throws(ProtocolViolation) -> TypeCode {
        switch self {
        case .synced(let version, let digest):
            guard digest.isEmpty || digest.count == RegionDigest.byteCount else {
                throw ProtocolViolation(.malformedFrame, "a SYNCED digest is \(RegionDigest.byteCount) bytes, not \(digest.count)")
            }
            VarInt.encode(version, into: &payload)
            VarInt.encode(UInt64(digest.count), into: &payload)
            payload.append(contentsOf: digest)
            return .synced
        case .digestRead(let first, let count, let group):
            try Self.checkDigestRead(count: count, group: group)
            VarInt.encode(first, into: &payload)
            VarInt.encode(count, into: &payload)
            VarInt.encode(group, into: &payload)
            return .digestRead
        case .digests(let first, let group, let digests):
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
            return .digests
        default:
            preconditionFailure("\(self) is not an integrity frame")
        }
    }

    private static func encodeDirty(epoch: UInt64, chunks: [UInt64], into payload: inout [UInt8]) throws(ProtocolViolation) {
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

    /// The bytes of a PAGES frame that precede its page bytes.
    public static func pagesHeader(_ pages: Pages, byteCount: Int) throws(ProtocolViolation) -> [UInt8] {
        try bulkHeader(.pages, fields: pages.headerFields(), byteCount: byteCount)
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

    private static func putString(_ s: String, limit: Int, into out: inout [UInt8]) throws(ProtocolViolation) {
        let utf8 = Array(s.utf8)
        guard utf8.count <= limit else {
            throw ProtocolViolation(.frameTooLarge, "string of \(utf8.count) bytes (limit \(limit))")
        }
        VarInt.encode(UInt64(utf8.count), into: &out)
        out.append(contentsOf: utf8)
    }
}
