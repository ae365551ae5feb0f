import Foundation
import Crypto

/// SHA-256 digests that compare a replica with its primary end to end.
///
/// - A SYNCED frame carries the primary's `synced` digest: SHA-256 over the
///   keyed hashes (`ChunkHasher`, the subscription's key) of every chunk as
///   the replica must hold it once the initial pass is applied (the bytes
///   sent in the pass, or what the mirror already held when its hash was
///   equal). The replica hashes its own copy the same way and compares.
/// - `memreplica verify` compares group digests: SHA-256 over the bytes of
///   `group` consecutive chunks, first for large groups, then chunk by chunk
///   inside the groups that differ.
public enum RegionDigest {
    public static let byteCount = 32

    /// SHA-256 over the concatenated 16-byte big-endian keyed hashes.
    public static func synced(_ hashes: [ChunkHash]) -> [UInt8] {
        var sha = SHA256()
        var buffer: [UInt8] = []
        buffer.reserveCapacity(min(hashes.count, 4096) * ChunkHash.byteCount)
        for (i, h) in hashes.enumerated() {
            h.append(to: &buffer)
            if buffer.count >= 4096 * ChunkHash.byteCount || i == hashes.count - 1 {
                sha.update(data: buffer)
                buffer.removeAll(keepingCapacity: true)
            }
        }
        return Array(sha.finalize())
    }

    /// SHA-256 over the bytes of chunks `first ..< first + group` (clipped
    /// to the region), read by `bytes(chunk)`.
    public static func group(first: Int, group: Int, chunkCount: Int,
                             bytes: (Int) throws -> [UInt8]) rethrows -> [UInt8] {
        var sha = SHA256()
        for chunk in first..<min(first + group, chunkCount) {
            sha.update(data: try bytes(chunk))
        }
        return Array(sha.finalize())
    }

    /// SHA-256 over a list of digests: one value for the whole region.
    public static func root(_ digests: [[UInt8]]) -> [UInt8] {
        var sha = SHA256()
        for d in digests { sha.update(data: d) }
        return Array(sha.finalize())
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}
