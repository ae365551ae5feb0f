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
                VarInt.encode(e.version, into: &payload)
            }
        case .subscribe(let s):
            type = .subscribe
            try putString(s.name, limit: FrameLimits.maxName, into: &payload)
            VarInt.encode(s.size, into: &payload)
            VarInt.encode(s.chunkSize, into: &payload)
            VarInt.encode(s.mode.rawValue, into: &payload)
            VarInt.encode(s.hashedChunks, into: &payload)
        case .have(let first, let hashes):
            type = .have
            guard hashes.count <= FrameLimits.maxHashesPerFrame else {
                throw ProtocolViolation(.frameTooLarge, "\(hashes.count) hashes (limit \(FrameLimits.maxHashesPerFrame))")
            }
            VarInt.encode(first, into: &payload)
            for h in hashes {
                for shift in stride(from: 56, through: 0, by: -8) { payload.append(UInt8(truncatingIfNeeded: h >> UInt64(shift))) }
            }
        case .synced(let version):
            type = .synced
            VarInt.encode(version, into: &payload)
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
                entries.append(.init(name: try string("region name", limit: FrameLimits.maxName), size: try varint("size"),
                                     chunkSize: try varint("chunk size"), version: try varint("version")))
            }
            return .catalog(entries)
        case .subscribe:
            let name = try string("region name", limit: FrameLimits.maxName)
            let size = try varint("size"), chunkSize = try varint("chunk size")
            let rawMode = try varint("mode")
            guard let mode = Frame.Subscribe.Mode(rawValue: rawMode) else {
                throw ProtocolViolation(.malformedFrame, "unknown subscribe mode \(rawMode)")
            }
            return .subscribe(.init(name: name, size: size, chunkSize: chunkSize, mode: mode,
                                    hashedChunks: try varint("hashed chunks")))
        case .have:
            let first = try varint("first chunk")
            let body = rest()
            guard body.count % 8 == 0 else {
                throw ProtocolViolation(.malformedFrame, "HAVE holds \(body.count) bytes of hashes, not a multiple of 8")
            }
            guard body.count / 8 <= FrameLimits.maxHashesPerFrame else {
                throw ProtocolViolation(.frameTooLarge, "\(body.count / 8) hashes (limit \(FrameLimits.maxHashesPerFrame))")
            }
            var hashes: [UInt64] = []
            hashes.reserveCapacity(body.count / 8)
            for i in stride(from: 0, to: body.count, by: 8) {
                var h: UInt64 = 0
                for b in body[i..<i + 8] { h = h << 8 | UInt64(b) }
                hashes.append(h)
            }
            return .have(firstChunk: first, hashes: hashes)
        case .synced:
            return .synced(version: try varint("version"))
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
