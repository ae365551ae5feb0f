import LinuxShim
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A Unix stream socket for the control protocol. Every read and write is
/// bounded by a deadline, so a stuck or hostile local client cannot hold
/// the peer (or `memreplica status`) forever.
struct UnixSocket: Sendable {
    let fd: FileDescriptor
    let path: String

    /// `sun_path` minus its terminating NUL.
    static let maxPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    static func make(path: String) throws -> UnixSocket {
        let raw = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw ControlError.system(call: "socket", path: path, errno: Errno(rawValue: errno)) }
        return UnixSocket(fd: FileDescriptor(rawValue: raw), path: path)
    }

    /// Connects to `path`; the raw errno on failure so callers can tell
    /// "nobody there" from real errors.
    static func connect(to path: String) throws -> UnixSocket {
        let socket = try make(path: path)
        let rc = try withAddress(path) { Glibc.connect(socket.fd.rawValue, $0, $1) }
        if rc != 0 {
            let e = Errno(rawValue: errno)
            socket.close()
            throw ControlError.system(call: "connect", path: path, errno: e)
        }
        return socket
    }

    /// Binds with owner-only permissions from the first instant: the umask
    /// covers the window between bind and chmod.
    func bindPrivately() throws {
        let saved = umask(0o177)
        let rc = try Self.withAddress(path) { bind(fd.rawValue, $0, $1) }
        let e = Errno(rawValue: errno)
        umask(saved)
        if rc != 0 {
            if e == .addressInUse { throw ControlError.alreadyRunning(path: path) }
            throw ControlError.system(call: "bind", path: path, errno: e)
        }
        if chmod(path, 0o600) != 0 {
            throw ControlError.system(call: "chmod", path: path, errno: Errno(rawValue: errno))
        }
    }

    func listen(backlog: Int32 = 16) throws {
        if Glibc.listen(fd.rawValue, backlog) != 0 {
            throw ControlError.system(call: "listen", path: path, errno: Errno(rawValue: errno))
        }
    }

    func accept() throws -> UnixSocket {
        while true {
            // accept4 is hidden behind _GNU_SOURCE in Swift's Glibc module.
            let raw = Glibc.accept(fd.rawValue, nil, nil)
            if raw >= 0 {
                _ = fcntl(raw, F_SETFD, FD_CLOEXEC)
                return UnixSocket(fd: FileDescriptor(rawValue: raw), path: path)
            }
            let e = Errno(rawValue: errno)
            if e != .interrupted { throw ControlError.system(call: "accept", path: path, errno: e) }
        }
    }

    func close() { try? fd.close() }

    /// Reads up to the first newline (or end of stream), at most `limit` bytes.
    func readLine(limit: Int, deadline: ContinuousClock.Instant) throws -> [UInt8] {
        var line: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            try waitUntil(POLLIN, deadline: deadline)
            let n = try chunk.withUnsafeMutableBytes { buffer in
                do {
                    return try fd.read(into: buffer, retryOnInterrupt: true)
                } catch {
                    throw ControlError.system(call: "read", path: path, errno: error as? Errno ?? .ioError)
                }
            }
            if n == 0 { return line }
            if let newline = chunk[..<n].firstIndex(of: UInt8(ascii: "\n")) {
                line.append(contentsOf: chunk[..<newline])
                if line.count > limit { throw ControlError.tooLarge(limit: limit) }
                return line
            }
            line.append(contentsOf: chunk[..<n])
            if line.count > limit { throw ControlError.tooLarge(limit: limit) }
        }
    }

    /// As `readLine`, with the descriptors passed along (SCM_RIGHTS). On a
    /// failure every descriptor received so far is closed.
    func readLineWithDescriptors(limit: Int, deadline: ContinuousClock.Instant,
                                 maxDescriptors: Int) throws -> (line: [UInt8], descriptors: [Int32]) {
        var line: [UInt8] = []
        var descriptors: [Int32] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        do {
            while true {
                try waitUntil(POLLIN, deadline: deadline)
                var fds = [Int32](repeating: -1, count: 8)
                var count: Int32 = 0
                var truncated: Int32 = 0
                let n = chunk.withUnsafeMutableBytes { buffer in
                    qs_recv_with_fds(fd.rawValue, buffer.baseAddress, buffer.count, &fds, Int32(fds.count), &count, &truncated)
                }
                descriptors.append(contentsOf: fds.prefix(Int(count)))
                if n < 0 {
                    let e = Errno(rawValue: Int32(-n))
                    if e == .interrupted || e == .wouldBlock { continue }
                    throw ControlError.system(call: "recvmsg", path: path, errno: e)
                }
                if truncated != 0 || descriptors.count > maxDescriptors {
                    throw ControlError.malformed("more descriptors than the request allows (at most \(maxDescriptors))")
                }
                let got = Int(n)
                if got == 0 { return (line, descriptors) }
                if let newline = chunk[..<got].firstIndex(of: UInt8(ascii: "\n")) {
                    line.append(contentsOf: chunk[..<newline])
                    if line.count > limit { throw ControlError.tooLarge(limit: limit) }
                    return (line, descriptors)
                }
                line.append(contentsOf: chunk[..<got])
                if line.count > limit { throw ControlError.tooLarge(limit: limit) }
            }
        } catch {
            for d in descriptors { Glibc.close(d) }
            throw error
        }
    }

    /// Sends `bytes` in one message with `descriptor` attached, then the
    /// rest (if the first send was short) without it.
    func send(_ bytes: [UInt8], passing descriptor: Int32, deadline: ContinuousClock.Instant) throws {
        try waitUntil(POLLOUT, deadline: deadline)
        let n = bytes.withUnsafeBytes { qs_send_with_fd(fd.rawValue, $0.baseAddress, $0.count, descriptor) }
        if n < 0 { throw ControlError.system(call: "sendmsg", path: path, errno: Errno(rawValue: Int32(-n))) }
        if n < bytes.count { try send(Array(bytes[Int(n)...]), deadline: deadline) }
    }

    /// The connecting process's id, as the kernel recorded it.
    var peerProcessID: Int32? {
        let pid = qs_peer_pid(fd.rawValue)
        return pid > 0 ? Int32(pid) : nil
    }

    /// Writes all of `bytes`; never raises SIGPIPE if the reader went away.
    func send(_ bytes: [UInt8], deadline: ContinuousClock.Instant) throws {
        var offset = 0
        while offset < bytes.count {
            try waitUntil(POLLOUT, deadline: deadline)
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(fd.rawValue, raw.baseAddress! + offset, raw.count - offset,
                           Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
            if n < 0 {
                let e = Errno(rawValue: errno)
                if e == .interrupted || e == .wouldBlock { continue }
                throw ControlError.system(call: "send", path: path, errno: e)
            }
            offset += n
        }
    }

    private func waitUntil(_ event: Int32, deadline: ContinuousClock.Instant) throws {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { throw ControlError.timedOut }
            var pfd = pollfd(fd: fd.rawValue, events: Int16(event), revents: 0)
            let ms = Int32(clamping: Int64((remaining.milliseconds).rounded(.up)))
            let rc = poll(&pfd, 1, ms)
            if rc > 0 { return }
            if rc == 0 { continue }
            let e = Errno(rawValue: errno)
            if e != .interrupted { throw ControlError.system(call: "poll", path: path, errno: e) }
        }
    }

    private static func withAddress<R>(_ path: String,
                                       _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws -> R {
        let bytes = Array(path.utf8)
        guard bytes.count <= maxPathLength else { throw ControlError.pathTooLong(path: path, limit: maxPathLength) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                body($0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
