/// QUIC variable-length integers (RFC 9000 §16): the two high bits of the
/// first byte give the length (1, 2, 4 or 8 bytes), the rest is big-endian.
package enum VarInt {
    package static let max: UInt64 = (1 << 62) - 1

    package static func encode(_ value: UInt64, into out: inout [UInt8]) {
        precondition(value <= max, "varint out of range")
        switch value {
        case ..<(1 << 6):
            out.append(UInt8(value))
        case ..<(1 << 14):
            out.append(0x40 | UInt8(value >> 8)); out.append(UInt8(truncatingIfNeeded: value))
        case ..<(1 << 30):
            out.append(0x80 | UInt8(value >> 24))
            for shift in stride(from: 16, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        default:
            out.append(0xc0 | UInt8(value >> 56))
            for shift in stride(from: 48, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        }
    }

    /// Decodes at `offset`; nil when the bytes end before the integer does.
    /// Concrete overloads, not one generic over collections: every frame
    /// header is decoded here, and code in this module is not specialized
    /// for its callers' types.
    package static func decode(_ bytes: [UInt8], at offset: inout Int) -> UInt64? {
        bytes.withUnsafeBytes { decode($0, at: &offset) }
    }

    package static func decode(_ bytes: ArraySlice<UInt8>, at offset: inout Int) -> UInt64? {
        bytes.withUnsafeBytes { decode($0, at: &offset) }
    }

    package static func decode(_ bytes: UnsafeRawBufferPointer, at offset: inout Int) -> UInt64? {
        guard offset >= 0, offset < bytes.count else { return nil }
        let first = bytes[offset]
        let length = 1 << Int(first >> 6)
        guard offset + length <= bytes.count else { return nil }
        var value = UInt64(first & 0x3f)
        for i in offset + 1..<offset + length {
            value = value << 8 | UInt64(bytes[i])
        }
        offset += length
        return value
    }
}
