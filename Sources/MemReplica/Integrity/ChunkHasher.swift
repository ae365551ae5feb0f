import COpenSSL

/// Keyed 128-bit chunk hashes: GMAC (AES-128-GCM authenticating the chunk,
/// encrypting nothing), through OpenSSL's AES-NI and carry-less multiply
/// code.
///
/// Why GMAC: change detection must not be steerable by whoever writes the
/// region. GHASH under a secret key is almost-XOR-universal: two different
/// chunks of at most L 16-byte blocks collide with probability at most
/// (L + 1) / 2^128 (2^-116 for 64 KiB), for any bytes an attacker picks,
/// as long as the key and the hashes stay secret (they travel only inside
/// TLS and are never logged or reported). The IV is fixed: a chunk is
/// compared only with itself under the same key, and nothing is encrypted.
/// And it is cheap: compared side by side it costs far less than SHA-256
/// or Poly1305 and stays within the 2 × bound on XXH64's time
/// (`memreplica bench dirty`; figures in bench/RESULTS.md).
///
/// Not thread-safe: one hasher per thread or task (it owns an OpenSSL context).
public final class ChunkHasher {
    public let key: ChunkHashKey
    private let context: OpaquePointer

    private static let iv = [UInt8](repeating: 0, count: 12)

    public init(key: ChunkHashKey) {
        self.key = key
        guard let context = EVP_CIPHER_CTX_new() else { fatalError("EVP_CIPHER_CTX_new: out of memory") }
        self.context = context
        let ok = key.bytes.withUnsafeBufferPointer { k in
            Self.iv.withUnsafeBufferPointer { iv in
                EVP_EncryptInit_ex(context, EVP_aes_128_gcm(), nil, k.baseAddress, iv.baseAddress)
            }
        }
        // Only a broken libcrypto refuses AES-128-GCM with a 16-byte key.
        precondition(ok == 1, "EVP_EncryptInit_ex(AES-128-GCM) failed")
    }

    deinit { EVP_CIPHER_CTX_free(context) }

    /// The keyed hash of `bytes` (at most 2 GiB, far above any chunk).
    public func hash(_ bytes: UnsafeRawBufferPointer) -> ChunkHash {
        var tag = (UInt64(0), UInt64(0))
        var length: Int32 = 0
        let ok = Self.iv.withUnsafeBufferPointer { iv -> Bool in
            // The same key schedule, the IV again: a fresh GHASH.
            guard EVP_EncryptInit_ex(context, nil, nil, nil, iv.baseAddress) == 1 else { return false }
            if let base = bytes.baseAddress, bytes.count > 0 {
                guard EVP_EncryptUpdate(context, nil, &length, base.assumingMemoryBound(to: UInt8.self),
                                        Int32(bytes.count)) == 1 else { return false }
            }
            return withUnsafeMutableBytes(of: &tag) { t in
                EVP_EncryptFinal_ex(context, t.baseAddress!.assumingMemoryBound(to: UInt8.self), &length) == 1
                    && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, 16, t.baseAddress) == 1
            }
        }
        precondition(ok, "AES-GCM over a chunk failed")
        return ChunkHash(high: UInt64(bigEndian: tag.0), low: UInt64(bigEndian: tag.1))
    }

    public func hash(_ bytes: [UInt8]) -> ChunkHash {
        bytes.withUnsafeBytes { hash($0) }
    }

    /// The hash of a region's chunk as it is in the mapping now.
    public func hash(_ region: Region, chunk: Int) -> ChunkHash {
        let range = region.geometry.byteRange(ofChunk: chunk)!
        return hash(UnsafeRawBufferPointer(rebasing: region.bytes[range]))
    }
}
