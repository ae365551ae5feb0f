/// Which tracker a region gets, and why (for the log).
///
/// - `.memory` (a memfd only this process maps; its descriptor is private
///   and close-on-exec): every write goes through our mapping, so the
///   exact `WriteProtectTracker` sees them all. Falls back to hashing, with
///   the failing step and errno in the reason, where the kernel refuses
///   (older than 6.7, no userfaultfd permission, range already registered).
/// - `.file` (a /dev/shm file or a regular file): other programs may map
///   it or `pwrite()` it, and those writes never fault our mapping; only
///   hashing sees them, so a file-backed region always gets the hash
///   scanner.
public struct DirtyTrackerSelection: Sendable {
    public let tracker: any DirtyTracker
    public let reason: String
    public var kind: DirtyTrackerKind { tracker.kind }

    public init(tracker: any DirtyTracker, reason: String) {
        self.tracker = tracker
        self.reason = reason
    }

    /// Arms the tracker the region should have; writes from this moment
    /// on are reported by its first scan.
    public static func select(for region: Region) -> DirtyTrackerSelection {
        switch region.backing {
        case .file(let path):
            return .init(tracker: ChunkHashScanner(region: region), reason:
                "file-backed (\(path)): another process's mapping or write()/pwrite() can change it without faulting "
                + "this mapping, which only hashing sees")
        case .memory:
            do {
                return .init(tracker: try WriteProtectTracker(region: region), reason:
                    "memfd mapped by this process only: userfaultfd write-protection (WP_ASYNC) with PAGEMAP_SCAN "
                    + "sees every write to it")
            } catch {
                return .init(tracker: ChunkHashScanner(region: region),
                             reason: "userfaultfd write-protection unavailable (\(error)): hashing instead")
            }
        }
    }
}
