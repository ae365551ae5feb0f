/// The static secret behind QUIC stateless reset tokens (RFC 9000 §10.3):
/// the token of a connection ID is derived from it (ngtcp2's HKDF helper),
/// so an endpoint that lost all connection state, e.g. a restarted peer,
/// can still answer a packet for an old connection with a reset its peer
/// believes. Whoever holds the key can end our connections: it lives in
/// the state folder, readable by its owner only.
public struct StatelessResetKey: Sendable, CustomStringConvertible {
    /// Bytes in a key (RFC 9000 asks for a secret hard to guess; 256 bits).
    public static let length = 32

    package let bytes: [UInt8]

    /// A key from stored bytes; nil unless there are exactly `length`.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.length else { return nil }
        self.bytes = bytes
    }

    /// A fresh random key.
    public static func random() -> StatelessResetKey {
        var bytes = [UInt8](repeating: 0, count: length)
        bytes.withUnsafeMutableBytes { fillRandom($0.baseAddress!, length) }
        return StatelessResetKey(bytes: bytes)!
    }

    /// Never the secret itself.
    public var description: String { "StatelessResetKey(\(Self.length) bytes)" }
}
