/// How a library user's own writers (code in the peer's process that stores
/// through `Region.bytes`) take part in a migration's freeze.
public struct MigrationFreeze: Sendable {
    /// Returns once no writer will store to the region until `resume`. The
    /// migration waits for it at most `MigrationFreeze.pauseLimit`, then
    /// aborts (the source keeps the region).
    public var pause: @Sendable () async -> Void
    /// After the migration. `handedOver`: the region moved, so the writers
    /// must not store to it here again (their next owner is the
    /// destination); false: the migration aborted, write on.
    public var resume: @Sendable (_ handedOver: Bool) async -> Void

    public static let pauseLimit: Duration = .seconds(5)

    public init(pause: @escaping @Sendable () async -> Void, resume: @escaping @Sendable (_ handedOver: Bool) async -> Void) {
        self.pause = pause
        self.resume = resume
    }
}
