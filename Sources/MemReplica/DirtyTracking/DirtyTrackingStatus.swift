/// How one region's changes are being tracked, for status and tests.
public struct DirtyTrackingStatus: Sendable, Equatable {
    public var kind: DirtyTrackerKind
    public var reason: String
    /// Subscriptions sharing the tracker.
    public var subscribers: Int
    public var statistics: DirtyScanStatistics
}
