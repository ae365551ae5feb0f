import Glibc

/// A system call that failed, with its errno. The layers above wrap it in
/// their own error (`TransportError.system`, `WANEmulatorError.system`)
/// where users see it, with the same wording.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    public var call: String
    public var errno: Int32

    public init(call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call) failed: \(String(cString: strerror(errno)))" }
}
