#if canImport(Glibc)
import Glibc
#endif

/// Why the WAN emulator could not be set up or used; each description is one line.
public enum WANEmulatorError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Namespaces and TUN devices need CAP_NET_ADMIN (and CAP_SYS_ADMIN for setns).
    case notRoot
    /// iproute2's `ip` was not found on PATH.
    case ipMissing
    /// An `ip` command failed: the command line and its stderr.
    case commandFailed(command: String, status: Int32, stderr: String)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// A sysctl inside a namespace could not be set.
    case sysctl(name: String, value: String, errno: Int32)
    /// The requested TCP congestion controller is not available.
    case unknownCongestionControl(String, available: [String])
    case invalidProfile(String)
    /// The emulator was already shut down.
    case shutDown

    public var description: String {
        switch self {
        case .notRoot:
            return "the WAN emulator needs root (it creates network namespaces and TUN devices)"
        case .ipMissing:
            return "the WAN emulator needs iproute2's 'ip' command, which is not installed"
        case .commandFailed(let command, let status, let stderr):
            let detail = stderr.split(whereSeparator: \.isNewline).joined(separator: "; ")
            return "'\(command)' failed (exit status \(status))\(detail.isEmpty ? "" : ": \(detail)")"
        case .system(let call, let errno):
            return "\(call) failed: \(String(cString: strerror(errno)))"
        case .sysctl(let name, let value, let errno):
            return "setting \(name) to '\(value)' in a WAN namespace failed: \(String(cString: strerror(errno)))"
        case .unknownCongestionControl(let name, let available):
            return "TCP congestion control '\(name)' is not available (have: \(available.joined(separator: " ")))"
        case .invalidProfile(let why):
            return "invalid WAN link profile: \(why)"
        case .shutDown:
            return "the WAN emulator has been shut down"
        }
    }
}
