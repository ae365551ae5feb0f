import LinuxShim
#if canImport(Glibc)
import Glibc
#endif

/// A named network namespace (as `ip netns` makes them: a bind mount of the
/// namespace under /run/netns). Sockets and TUN devices belong to the
/// namespace of the thread that creates them and keep it whichever thread
/// uses them later, so `perform` is all a transport needs to live in one.
public struct NetworkNamespace: Sendable, Equatable, CustomStringConvertible {
    public let name: String
    public var path: String

    public init(name: String, path: String? = nil) {
        self.name = name
        self.path = path ?? NetworkNamespace.directory + "/" + name
    }

    /// Where `ip netns` mounts named namespaces.
    public static let directory = "/run/netns"

    public var description: String { name }

    /// Runs `body` on the current thread with the thread switched into this
    /// namespace (setns), then switches back, so sockets `body` creates live
    /// in the namespace. `body` must not suspend (it is synchronous) and
    /// must not hand the thread to other work, which would run in the
    /// namespace too. errno is as `body` left it, so a failed socket() can
    /// still be reported after the switch back.
    public func perform<T>(_ body: () throws -> T) throws -> T {
        // The thread's own namespace, not the process's: a thread that is
        // already inside another namespace (nested perform) returns there.
        let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard home >= 0 else { throw SystemCallError(call: "open /proc/thread-self/ns/net", errno: errno) }
        let target = open(path, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else {
            let e = errno
            close(home)
            throw SystemCallError(call: "open \(path)", errno: e)
        }
        let entered = qs_setns_net(target)
        close(target)
        guard entered == 0 else {
            close(home)
            throw SystemCallError(call: "setns \(name)", errno: -entered)
        }
        let result = Result { try body() }
        let bodyErrno = errno
        // A pooled thread left in the wrong namespace would silently put
        // unrelated sockets there; there is no safe way to continue.
        let back = qs_setns_net(home)
        if back != 0 { fatalError("cannot return the thread from network namespace \(name): errno \(-back)") }
        close(home)
        errno = bodyErrno
        return try result.get()
    }

    /// Whether the namespace's mount point exists.
    public var exists: Bool { access(path, F_OK) == 0 }
}
