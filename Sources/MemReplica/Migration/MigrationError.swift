/// Why a migration request could not start (bad usage); an aborted
/// migration is a `MigrationReport` instead.
public struct MigrationError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
