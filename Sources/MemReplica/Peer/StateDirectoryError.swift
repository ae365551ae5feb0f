/// Why the state folder could not be prepared.
public enum StateDirectoryError: Error, Sendable, CustomStringConvertible {
    case notADirectory(String)
    case cannotCreate(String, reason: String)
    case cannotLock(reason: String)
    /// The QUIC stateless reset key file (`quic-reset.key`) is unusable.
    case resetKey(String, reason: String)

    public var description: String {
        switch self {
        case .notADirectory(let p): return "state folder \(p) exists but is not a directory"
        case .cannotCreate(let p, let reason): return "cannot create state folder \(p): \(reason)"
        case .cannotLock(let reason): return "cannot lock the development PKI: \(reason)"
        case .resetKey(let p, let reason): return "stateless reset key \(p): \(reason)"
        }
    }
}
