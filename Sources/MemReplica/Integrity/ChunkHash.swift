/// A chunk's 128-bit keyed hash (`ChunkHasher`): what HAVE frames carry and
/// what change detection compares. Equal hashes under one secret key mean
/// equal bytes except with probability about 2^-116 per pair of 64 KiB
/// chunks, whatever the bytes are, as long as the key stays secret.
public struct ChunkHash: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// What a mirror sends for a chunk it does not hold (never equal to a
    /// real chunk's hash except by a 2^-128 accident, which costs one resend).
    public static let none = ChunkHash(high: 0, low: 0)

    /// Wire size, big-endian.
    public static let byteCount = 16

    public func append(to out: inout [UInt8]) {
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
    }

    /// Reads 16 big-endian bytes from `bytes` at `offset` (the caller checked the length).
    public init(bigEndian bytes: some Collection<UInt8>) {
        precondition(bytes.count == Self.byteCount)
        var high: UInt64 = 0, low: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { high = high << 8 | UInt64(b) } else { low = low << 8 | UInt64(b) }
        }
        self.init(high: high, low: low)
    }

    public var description: String {
        let hex = String(high, radix: 16)
        let lowHex = String(low, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex + String(repeating: "0", count: 16 - lowHex.count) + lowHex
    }
}
