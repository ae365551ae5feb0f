import MemReplicaTransportCore
/// Encoding helpers for mux records (`MuxRecordType` has the format).
enum MuxRecord {
    /// Appends a whole record to `out`.
    static func append(_ type: MuxRecordType, stream: Int64 = 0, payload: [UInt8] = [], to out: inout [UInt8]) {
        out.append(type.rawValue)
        VarInt.encode(UInt64(stream), into: &out)
        VarInt.encode(UInt64(payload.count), into: &out)
        out.append(contentsOf: payload)
    }

    static func append(_ type: MuxRecordType, stream: Int64 = 0, value: UInt64, to out: inout [UInt8]) {
        var payload: [UInt8] = []
        VarInt.encode(value, into: &payload)
        append(type, stream: stream, payload: payload, to: &out)
    }

    /// Writes a record header at `to` (room for `MuxLimits.maxHeader`
    /// bytes); returns its length. DATA payloads are copied in after it.
    static func writeHeader(_ type: MuxRecordType, stream: Int64, length: Int, to: UnsafeMutableRawPointer) -> Int {
        var header: [UInt8] = [type.rawValue]
        header.reserveCapacity(MuxLimits.maxHeader)
        VarInt.encode(UInt64(stream), into: &header)
        VarInt.encode(UInt64(length), into: &header)
        header.withUnsafeBytes { to.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return header.count
    }

    /// A single varint payload (codes, increments); refuses anything else.
    static func value(of payload: [UInt8], in type: MuxRecordType) throws -> UInt64 {
        var offset = 0
        guard let v = VarInt.decode(payload, at: &offset), offset == payload.count else {
            throw MuxViolation("malformed \(type) record")
        }
        return v
    }
}

enum MuxLimits {
    /// DATA payloads above this are refused before any byte is buffered.
    static let maxDataPayload = 1 << 20
    /// Every other record is small; it is buffered whole, so it is bounded.
    static let maxControlPayload = 256
    static let maxCloseReason = 1024
    /// type + two 8-byte varints.
    static let maxHeader = 17
    /// Bytes of control records a link may hold unsent (a peer that sends
    /// PINGs and never reads would otherwise grow it).
    static let maxControlBacklog = 256 << 10
    static let tokenLength = 16
}
