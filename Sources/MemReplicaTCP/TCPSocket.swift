import LinuxShim
import MemReplicaSystem
import MemReplicaTransportCore
#if canImport(Glibc)
import Glibc
#endif

/// Non-blocking TCP sockets as the TCP transport uses them: TCP_NODELAY
/// (mux records are sent as soon as they are framed) and large buffers.
enum TCPSocket {
    /// A listening socket on `address` (dual-stack for an IPv6 wildcard).
    /// `namespace`: the network namespace the socket is created in (nil: the thread's own).
    static func listen(on address: PeerAddress, bufferSize: Int?, userTimeout: Duration, congestionControl: String? = nil,
                       namespace: NetworkNamespace? = nil) throws -> (fd: Int32, localAddress: PeerAddress) {
        let family = address.storage.family
        let fd = try makeSocket(family, in: namespace)
        guard fd >= 0 else { throw TransportError.system(call: "socket", errno: errno) }
        do {
            var one: Int32 = 1, off: Int32 = 0
            let len = socklen_t(MemoryLayout<Int32>.size)
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, len)
            if family == AF_INET6 { _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &off, len) }
            // Accepted sockets inherit these; the receive buffer must be set
            // before the handshake, as it fixes the TCP window scale.
            configure(fd, bufferSize: bufferSize, userTimeout: userTimeout, congestionControl: congestionControl)
            if address.storage.withSockaddr({ bind(fd, $0, $1) }) != 0 {
                let e = errno
                if e == EADDRINUSE { throw TransportError.addressInUse(address: address.description) }
                throw TransportError.system(call: "bind \(address)", errno: e)
            }
            guard Glibc.listen(fd, 512) == 0 else { throw TransportError.system(call: "listen", errno: errno) }
            let bound = PeerAddress(storage: SocketAddressStorage.local(of: fd))
            return (fd, address.isWildcard ? try PeerAddress(parsing: ":\(bound.port)") : bound)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Starts connecting to `remote`; the caller waits for writability and
    /// then reads `pendingError`. `source` pins the local address (port 0).
    static func startConnect(to remote: SocketAddressStorage, source: PeerAddress?, bufferSize: Int?,
                             userTimeout: Duration, congestionControl: String? = nil,
                             namespace: NetworkNamespace? = nil) throws -> Int32 {
        let fd = try makeSocket(remote.family, in: namespace)
        guard fd >= 0 else { throw TransportError.system(call: "socket", errno: errno) }
        configure(fd, bufferSize: bufferSize, userTimeout: userTimeout, congestionControl: congestionControl)
        if let source, !source.isWildcard, source.storage.family == remote.family,
           let local = try? PeerAddress(host: source.host, port: 0) {
            _ = local.storage.withSockaddr { bind(fd, $0, $1) }
        }
        let rc = remote.withSockaddr { connect(fd, $0, $1) }
        if rc != 0 && errno != EINPROGRESS {
            let e = errno
            Glibc.close(fd)
            throw connectError(e, remote: PeerAddress(storage: remote))
        }
        return fd
    }

    /// The error a failed connect maps to.
    static func connectError(_ e: Int32, remote: PeerAddress) -> TransportError {
        switch e {
        case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT, EHOSTDOWN, ENETDOWN:
            return .peerUnreachable(address: remote.description, detail: String(cString: strerror(e)))
        default:
            return .system(call: "connect \(remote)", errno: e)
        }
    }

    /// SO_ERROR: 0 once a non-blocking connect has succeeded.
    static func pendingError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &len) == 0 else { return errno }
        return value
    }

    /// The next pending connection: nil when there is none (or on a
    /// transient error, which the caller retries on the next wake-up).
    static func acceptOne(_ listener: Int32, userTimeout: Duration,
                          congestionControl: String? = nil) -> (fd: Int32, remote: SocketAddressStorage)? {
        var from = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &from) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                accept(listener, $0, &len)
            }
        }
        guard fd >= 0 else { return nil }
        // (accept4 is not visible from Swift: set the flags afterwards.)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let storage = withUnsafePointer(to: &from) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddressStorage($0, length: len) }
        }
        configure(fd, bufferSize: nil, userTimeout: userTimeout, congestionControl: congestionControl)
        return (fd, storage)
    }

    /// TCP_NODELAY, TCP_USER_TIMEOUT (data unacknowledged that long ends
    /// the connection, as the idle timeout does for QUIC) and the buffers.
    static func configure(_ fd: Int32, bufferSize: Int?, userTimeout: Duration, congestionControl: String? = nil) {
        var one: Int32 = 1
        let len = socklen_t(MemoryLayout<Int32>.size)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, len)
        if let congestionControl {
            _ = congestionControl.withCString { setsockopt(fd, Int32(IPPROTO_TCP), TCP_CONGESTION, $0, socklen_t(strlen($0))) }
        }
        var milliseconds = UInt32(clamping: Int(userTimeout.seconds * 1000))
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, &milliseconds, len)
        var unsent = Int32(TCPConfiguration.unsentLowWatermark)
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NOTSENT_LOWAT, &unsent, len)
        guard let bufferSize else { return }
        var value = Int32(clamping: bufferSize)
        // Only when the size can be forced (root). A fixed buffer turns the
        // kernel's autotuning off, and rmem_max (about 200 KiB by default)
        // would cap the window far below what autotuning reaches on a WAN.
        for option in [SO_RCVBUFFORCE, SO_SNDBUFFORCE] {
            _ = setsockopt(fd, SOL_SOCKET, option, &value, len)
        }
    }

    /// A non-blocking TCP socket, made inside `namespace` when one is given.
    private static func makeSocket(_ family: Int32, in namespace: NetworkNamespace?) throws -> Int32 {
        let create = { socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        return try namespace?.perform(create) ?? create()
    }

    /// The address `fd` is bound to.
    static func localStorage(_ fd: Int32) -> SocketAddressStorage { .local(of: fd) }
}
