/// One request on the control socket: a single JSON line such as
/// `{"command":"status"}`.
public struct ControlRequest: Codable, Sendable, Equatable {
    public var command: String
    /// The region a command is about (`verify`).
    public var region: String?
    /// What `migrate` is to do.
    public var migration: MigrationRequest?

    public init(command: String, region: String? = nil, migration: MigrationRequest? = nil) {
        self.command = command
        self.region = region
        self.migration = migration
    }

    public static let status = ControlRequest(command: "status")
    public static let stats = ControlRequest(command: "stats")
    public static func verify(_ region: String) -> ControlRequest { ControlRequest(command: "verify", region: region) }
    public static func migrate(_ request: MigrationRequest) -> ControlRequest {
        ControlRequest(command: "migrate", region: request.region, migration: request)
    }
}
