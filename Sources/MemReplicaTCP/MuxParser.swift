import MemReplicaTransportCore
/// Splits the bytes of one TLS connection into mux records, as they arrive.
/// DATA payloads are handed on in the slices they came in (no record is
/// ever buffered whole); other records are small and bounded, and are
/// buffered until complete. Every length is checked against its limit as
/// soon as the header is in, before any payload is kept.
struct MuxParser {
    enum Event {
        /// A DATA record starts; `length` bytes follow as `.dataBytes`.
        case dataHeader(stream: Int64, length: Int)
        case dataBytes(UnsafeRawBufferPointer)
        case record(MuxRecordType, stream: Int64, payload: [UInt8])
    }

    private var header: [UInt8] = []
    private var dataRemaining = 0
    private var control: (type: MuxRecordType, stream: Int64, length: Int)?
    private var controlBytes: [UInt8] = []

    init() { header.reserveCapacity(MuxLimits.maxHeader) }

    /// True between records (a TCP connection may end only there).
    var atRecordBoundary: Bool { header.isEmpty && dataRemaining == 0 && control == nil }

    mutating func consume(_ input: UnsafeRawBufferPointer, _ handle: (Event) throws -> Void) throws {
        var i = 0
        let count = input.count
        while i < count {
            if dataRemaining > 0 {
                let n = min(dataRemaining, count - i)
                dataRemaining -= n
                try handle(.dataBytes(UnsafeRawBufferPointer(rebasing: input[i..<i + n])))
                i += n
                continue
            }
            if let c = control {
                let n = min(c.length - controlBytes.count, count - i)
                controlBytes.append(contentsOf: input[i..<i + n])
                i += n
                if controlBytes.count == c.length {
                    let payload = controlBytes
                    controlBytes = []
                    control = nil
                    try handle(.record(c.type, stream: c.stream, payload: payload))
                }
                continue
            }
            header.append(input[i])
            i += 1
            guard let (type, stream, length) = try decodeHeader() else { continue }
            header.removeAll(keepingCapacity: true)
            if type == .data {
                dataRemaining = length
                try handle(.dataHeader(stream: stream, length: length))
            } else if length == 0 {
                try handle(.record(type, stream: stream, payload: []))
            } else {
                control = (type, stream, length)
                controlBytes.reserveCapacity(length)
            }
        }
    }

    /// The header in `header`, once all of it is there.
    private func decodeHeader() throws -> (MuxRecordType, Int64, Int)? {
        guard let type = MuxRecordType(rawValue: header[0]) else {
            throw MuxViolation("unknown record type 0x\(String(header[0], radix: 16))")
        }
        var offset = 1
        guard let stream = VarInt.decode(header, at: &offset), let length = VarInt.decode(header, at: &offset) else {
            return nil
        }
        guard length <= UInt64(type.maxPayload) else {
            throw MuxViolation("\(type) record of \(length) bytes (the limit is \(type.maxPayload))")
        }
        if type.isConnectionLevel && stream != 0 {
            throw MuxViolation("\(type) record for stream \(stream) (it belongs to the connection)")
        }
        return (type, Int64(stream), Int(length))
    }
}
