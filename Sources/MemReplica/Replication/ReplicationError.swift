import MemReplicaTransportCore
/// Why a region's replication stopped.
public enum ReplicationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The other side refused or broke off, saying why (an ERROR frame).
    case refusedByPeer(code: UInt64, message: String)
    /// The other side broke the protocol; we ended the stream with this.
    case violation(ProtocolViolation)
    /// The stream ended before the subscription was answered.
    case streamEnded
    /// At SYNCED the replica's copy did not hash to the primary's digest:
    /// the file changed under the replica, or a chunk was lost. The mirror
    /// subscribes again, and the resume re-sends what differs.
    case selfCheckFailed(region: String)
    /// A PAGES frame's unchanged pages, with its new ones, did not hash to
    /// the frame's check: this copy of the chunk is not what the primary
    /// last sent (the file changed under the replica). Nothing of the
    /// frame was stored; the mirror subscribes again and the resume
    /// re-sends what differs.
    case pageCheckFailed(region: String, chunk: Int)
    /// The exporting peer holds an older generation of the region than
    /// this mirror has followed: a newer owner exists elsewhere.
    case staleGeneration(region: String, seen: UInt64, offered: UInt64)

    public var description: String {
        switch self {
        case .refusedByPeer(let code, let message):
            let name = ProtocolErrorCode(rawValue: code).map { "\($0)" } ?? "code \(code)"
            return "peer refused: \(name): \(message)"
        case .violation(let v): return "protocol violation: \(v)"
        case .streamEnded: return "the region stream ended"
        case .selfCheckFailed(let region):
            return "replica of '\(region)' does not hash to the primary's digest after the initial sync; resubscribing"
        case .pageCheckFailed(let region, let chunk):
            return "replica of '\(region)': chunk \(chunk) is not what the primary last sent (a PAGES check failed); "
                + "nothing stored, resubscribing"
        case .staleGeneration(let region, let seen, let offered):
            return "the peer offers '\(region)' at generation \(offered), older than generation \(seen) already followed: "
                + "refusing a stale primary"
        }
    }
}
