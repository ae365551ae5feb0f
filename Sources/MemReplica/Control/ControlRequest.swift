/// One request on the control socket: a single JSON line such as
/// `{"command":"status"}`.
public struct ControlRequest: Codable, Sendable, Equatable {
    public var command: String

    public init(command: String) { self.command = command }

    public static let status = ControlRequest(command: "status")
    public static let stats = ControlRequest(command: "stats")
}
