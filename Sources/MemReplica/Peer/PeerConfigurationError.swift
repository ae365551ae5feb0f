/// A config file or command line `memreplica peer` cannot run with: one line
/// naming the file and the setting (`peer.json: exports[1].sise: unknown key`)
/// or the flag at fault. Always a usage error (exit status 2).
public struct PeerConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String

    init(_ description: String) { self.description = description }
}
