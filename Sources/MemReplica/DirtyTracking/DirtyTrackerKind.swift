/// How a region's writes are found, and so which writes are seen.
public enum DirtyTrackerKind: String, Sendable, Codable, CustomStringConvertible {
    /// userfaultfd write-protection in WP_ASYNC mode, read and reset with
    /// PAGEMAP_SCAN (`WriteProtectTracker`). Exact and cheap (the cost
    /// grows with the pages written, not the region's size), but it sees
    /// only writes that fault through this process's registered mapping:
    /// stores by this process (any thread) and kernel copies into that
    /// mapping (`read()`, `recv()` into it). Not `write()`/`pwrite()` or
    /// `fallocate()` on the backing file, not another process's mapping
    /// (including a `fork()`ed child's), not device DMA into pinned pages.
    case writeProtect = "userfaultfd"
    /// Hashing every chunk and comparing with the last scan
    /// (`ChunkHashScanner`). Sees every change, whoever makes it, but
    /// reads the whole region per scan.
    case hashScan = "hash"

    public var description: String { rawValue }
}
