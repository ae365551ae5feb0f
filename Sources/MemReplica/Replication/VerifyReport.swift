/// What `memreplica verify` finds: a replica compared with its primary by
/// SHA-256 digests of its chunks (`RegionDigest`). The JSON form is a
/// contract for scripts: fields are only added, never renamed.
public struct VerifyReport: Codable, Sendable, Equatable {
    public var region: String
    /// The primary's address, as the mirror reaches it.
    public var source: String
    public var lazy: Bool
    public var chunks: Int
    public var chunkSize: Int
    /// Chunks compared; a lazy replica compares only those it holds.
    public var compared: Int
    /// Lazy replica: chunks not held (they are pulled when touched).
    public var missing: Int
    /// Chunks whose bytes differ from the primary's after the re-checks,
    /// ascending: the first `VerifyReport.listed`, and how many in all.
    public var differingChunks: [Int]
    public var differingCount: Int
    /// True when every compared chunk equals the primary's.
    public var equal: Bool
    /// SHA-256 over each side's group digests (hex); equal for a complete
    /// replica that matches. `group` chunks per digest.
    public var primaryDigest: String
    public var replicaDigest: String
    public var group: Int
    /// Passes over the chunks that differed: a primary written during the
    /// check makes chunks differ until the replica has applied the writes.
    public var rounds: Int
    public var seconds: Double

    /// At most this many differing chunks are listed.
    public static let listed = 32
}
