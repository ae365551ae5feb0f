/// What `memreplica migrate` asks of the source peer (the control socket's
/// `migrate` request carries it as JSON; library users call
/// `PeerService.migrate`).
public struct MigrationRequest: Sendable, Codable, Equatable {
    /// The region, exported by this peer.
    public var region: String
    /// The destination peer's listen address (HOST:PORT).
    public var destination: String
    public var mode: MigrationMode
    /// Freeze only once the estimated downtime is below this.
    public var maxDowntimeMilliseconds: Double
    /// Give up (source keeps the region, unharmed) after this long.
    public var timeoutSeconds: Double
    /// After the hand-over: mirror the region from its new owner, or stop
    /// serving it.
    public var then: AfterHandOver

    public enum AfterHandOver: String, Sendable, Codable {
        case mirror, stop
    }

    /// QEMU's default downtime budget.
    public static let defaultMaxDowntimeMilliseconds: Double = 300
    public static let defaultTimeoutSeconds: Double = 120

    public init(region: String, destination: String, mode: MigrationMode = .precopy,
                maxDowntimeMilliseconds: Double = Self.defaultMaxDowntimeMilliseconds,
                timeoutSeconds: Double = Self.defaultTimeoutSeconds, then: AfterHandOver = .mirror) {
        self.region = region
        self.destination = destination
        self.mode = mode
        self.maxDowntimeMilliseconds = maxDowntimeMilliseconds
        self.timeoutSeconds = timeoutSeconds
        self.then = then
    }
}
