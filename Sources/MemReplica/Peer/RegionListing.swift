/// One entry of the HTTP/3 face's `GET /regions`: what a client needs to
/// ask for chunks.
public struct RegionListing: Sendable, Codable, Equatable {
    public var name: String
    /// "primary" (exported here) or "replica" (mirrored here).
    public var role: String
    public var size: Int
    public var chunkSize: Int
    public var chunks: Int
    /// Replicas: chunks held now (a lazy replica serves only these).
    public var chunksPresent: Int?
    /// Replicas: post-copy.
    public var lazy: Bool?
    /// Replicas: whether the bytes are the primary's current ones now
    /// (chunks are served only then).
    public var synced: Bool?

    public init(name: String, role: String, size: Int, chunkSize: Int, chunks: Int, chunksPresent: Int? = nil,
                lazy: Bool? = nil, synced: Bool? = nil) {
        self.name = name; self.role = role; self.size = size; self.chunkSize = chunkSize; self.chunks = chunks
        self.chunksPresent = chunksPresent; self.lazy = lazy; self.synced = synced
    }
}
