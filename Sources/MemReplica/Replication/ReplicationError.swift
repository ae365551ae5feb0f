/// Why a region's replication stopped.
public enum ReplicationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The other side refused or broke off, saying why (an ERROR frame).
    case refusedByPeer(code: UInt64, message: String)
    /// The other side broke the protocol; we ended the stream with this.
    case violation(ProtocolViolation)
    /// The stream ended before the subscription was answered.
    case streamEnded

    public var description: String {
        switch self {
        case .refusedByPeer(let code, let message):
            let name = ProtocolErrorCode(rawValue: code).map { "\($0)" } ?? "code \(code)"
            return "peer refused: \(name): \(message)"
        case .violation(let v): return "protocol violation: \(v)"
        case .streamEnded: return "the region stream ended"
        }
    }
}
