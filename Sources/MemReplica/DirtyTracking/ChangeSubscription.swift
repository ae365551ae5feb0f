import MemReplicaSystem
/// One follower of a region's changes (see `RegionChangeFeed`). Cancel it
/// when done: the last cancellation disarms the region's tracker.
public final class ChangeSubscription: Sendable {
    public let feed: RegionChangeFeed
    private let id: Int
    private let cancelled = Locked(false)

    init(feed: RegionChangeFeed, id: Int) {
        self.feed = feed
        self.id = id
    }

    deinit { cancel() }

    /// Chunks written since this subscription's previous call (or since it
    /// subscribed), ascending, each once. Scans the region's tracker.
    public func changedChunks() -> [Int] {
        feed.changedChunks(for: id)
    }

    /// Chunks the last scan (`ScanClock`'s, or another subscription's)
    /// handed to this subscription, without scanning again.
    public func takePending() -> [Int] { feed.takePending(for: id) }

    /// Whether a scan handed this subscription chunks it has not taken.
    var hasPending: Bool { feed.hasPending(for: id) }

    /// How the region is tracked (kind, reason, scan statistics).
    public var status: DirtyTrackingStatus { feed.status }

    public func cancel() {
        guard cancelled.withLock({ was in defer { was = true }; return !was }) else { return }
        feed.unsubscribe(id)
    }
}
