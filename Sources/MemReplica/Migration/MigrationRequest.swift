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
    /// When the two copies are compared (both hashed whole, keyed).
    public var verify: Verification
    /// Start now, or at the next quiet phase of the region's writers.
    public var when: Timing

    public enum Timing: String, Sendable, Codable {
        case now
        /// Wait (at most half the timeout) for the start of the next quiet
        /// phase of a cycle found in the region's dirty rate
        /// (`QuietPhaseModel`); at once when there is none.
        case quiet
    }

    public enum AfterHandOver: String, Sendable, Codable {
        case mirror, stop
    }

    public enum Verification: String, Sendable, Codable {
        /// Before the destination commits: a difference aborts the
        /// migration, nothing lost; the source's hash is in the downtime.
        case before
        /// Right after the commit, the source still frozen: the downtime is
        /// the flush and one round trip; a difference is reported (the
        /// region is marked on the destination, the source keeps its frozen
        /// copy) but the hand-over stands.
        case after
    }

    /// QEMU's default downtime budget.
    public static let defaultMaxDowntimeMilliseconds: Double = 300
    public static let defaultTimeoutSeconds: Double = 120

    public init(region: String, destination: String, mode: MigrationMode = .precopy,
                maxDowntimeMilliseconds: Double = Self.defaultMaxDowntimeMilliseconds,
                timeoutSeconds: Double = Self.defaultTimeoutSeconds, then: AfterHandOver = .mirror,
                verify: Verification = .before, when: Timing = .now) {
        self.region = region
        self.destination = destination
        self.mode = mode
        self.maxDowntimeMilliseconds = maxDowntimeMilliseconds
        self.timeoutSeconds = timeoutSeconds
        self.then = then
        self.verify = verify
        self.when = when
    }

    private enum Keys: String, CodingKey {
        case region, destination, mode, maxDowntimeMilliseconds, timeoutSeconds, then, verify, when
    }

    /// `verify` and `when` may be left out (before, now).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        self.init(region: try c.decode(String.self, forKey: .region), destination: try c.decode(String.self, forKey: .destination),
                  mode: try c.decode(MigrationMode.self, forKey: .mode),
                  maxDowntimeMilliseconds: try c.decode(Double.self, forKey: .maxDowntimeMilliseconds),
                  timeoutSeconds: try c.decode(Double.self, forKey: .timeoutSeconds),
                  then: try c.decode(AfterHandOver.self, forKey: .then),
                  verify: try c.decodeIfPresent(Verification.self, forKey: .verify) ?? .before,
                  when: try c.decodeIfPresent(Timing.self, forKey: .when) ?? .now)
    }
}
