import SystemPackage

/// Failures of the local control socket, worded for the person at the shell.
public enum ControlError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Nothing listens at the path: no peer runs with this state folder.
    case noPeerRunning(path: String, stale: Bool)
    /// A live peer already answers on the path.
    case alreadyRunning(path: String)
    /// The path exists and is something other than a socket.
    case notASocket(path: String)
    /// `sockaddr_un` holds only a short path.
    case pathTooLong(path: String, limit: Int)
    case timedOut
    case tooLarge(limit: Int)
    /// The other side sent something that is not the expected JSON line.
    case malformed(String)
    /// The peer understood the request and refused it.
    case refused(String)
    case system(call: String, path: String, errno: Errno)

    public var description: String {
        switch self {
        case .noPeerRunning(let path, let stale):
            return stale
                ? "no memreplica peer is running (nothing answers on the control socket \(path))"
                : "no memreplica peer is running (no control socket at \(path); use --control or --state-dir if the peer uses another)"
        case .alreadyRunning(let path):
            return "another memreplica peer is already running with control socket \(path); stop it, or give this one its own --state-dir or --control"
        case .notASocket(let path):
            return "\(path) exists and is not a socket; refusing to replace it"
        case .pathTooLong(let path, let limit):
            return "control socket path is longer than \(limit) bytes: \(path)"
        case .timedOut:
            return "the control socket timed out: the other side stopped responding"
        case .tooLarge(let limit):
            return "control message exceeds the \(limit)-byte limit"
        case .malformed(let detail):
            return "malformed control message: \(detail)"
        case .refused(let message):
            return "the peer refused the request: \(message)"
        case .system(let call, let path, let errno):
            return "\(call) \(path): \(errno)"
        }
    }
}
