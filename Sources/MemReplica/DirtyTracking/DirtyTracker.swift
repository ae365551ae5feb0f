/// Finds the chunks of a region written since it last looked.
///
/// Each call to `changedChunks` reads and resets: a chunk written since the
/// previous call (or since the tracker was made) is reported once, in
/// ascending order. A tracker may report a chunk that was written with the
/// same bytes, or (the hash scanner) miss such a write, but never misses a
/// chunk whose bytes changed through the writes it covers. Which writes
/// those are depends on the kind: see `DirtyTrackerKind`.
///
/// Not safe to call from two threads at once; `RegionChangeFeed` serializes
/// the callers of a shared tracker.
public protocol DirtyTracker: AnyObject, Sendable {
    var kind: DirtyTrackerKind { get }
    /// Chunks written since the last call, ascending, each once.
    func changedChunks() throws -> [Int]
    /// Cost of the scans so far (the time each `changedChunks` took).
    var statistics: DirtyScanStatistics { get }
}
