/// The secret a `ChunkHasher` is keyed with: 16 random bytes (AES-128).
///
/// Keys never leave the two peers: a mirror makes one per subscription and
/// sends it in SUBSCRIBE, inside TLS; a primary's hash scanner makes one per
/// process. A program that writes the region cannot learn it, so it cannot
/// craft a change that keeps a chunk's hash (which XXH64, invertible, allowed).
public struct ChunkHashKey: Sendable, Equatable {
    public let bytes: [UInt8]

    public static let byteCount = 16

    /// Nil unless `bytes` is exactly 16 bytes.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    /// A fresh key from the system's CSPRNG.
    public static func random() -> ChunkHashKey {
        var generator = SystemRandomNumberGenerator()
        return ChunkHashKey(bytes: (0..<byteCount).map { _ in UInt8.random(in: .min ... .max, using: &generator) })!
    }
}
