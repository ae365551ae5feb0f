import MemReplicaTransportCore
/// CLOSE record payload: `kind:u8` (0 application, 1 transport), `code`,
/// `reason` (varint length, UTF-8, at most `MuxLimits.maxCloseReason` bytes).
struct MuxClose: Equatable {
    var isApplication: Bool
    var code: UInt64
    var reason: String

    func encoded() -> [UInt8] {
        var out: [UInt8] = [isApplication ? 0 : 1]
        VarInt.encode(min(code, VarInt.max), into: &out)
        var text = Array(reason.utf8.prefix(MuxLimits.maxCloseReason))
        // Never cut a character in half.
        while !text.isEmpty, String(validating: text, as: UTF8.self) == nil { text.removeLast() }
        VarInt.encode(UInt64(text.count), into: &out)
        out.append(contentsOf: text)
        return out
    }

    init(isApplication: Bool, code: UInt64, reason: String) {
        self.isApplication = isApplication
        self.code = code
        self.reason = reason
    }

    init(decoding payload: [UInt8]) throws {
        var offset = 1
        guard let kind = payload.first, kind <= 1, let code = VarInt.decode(payload, at: &offset),
              let length = VarInt.decode(payload, at: &offset), length <= UInt64(MuxLimits.maxCloseReason),
              offset + Int(length) == payload.count,
              let reason = String(validating: payload[offset...], as: UTF8.self) else {
            throw MuxViolation("malformed CLOSE record")
        }
        isApplication = kind == 0
        self.code = code
        self.reason = reason
    }
}
