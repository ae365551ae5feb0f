import MemReplicaTransportCore
import LinuxShim
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Serves `GET /metrics` (and nothing else) over plain HTTP/1.1 for a
/// Prometheus scraper: `memreplica peer --metrics HOST:PORT`.
///
/// Deliberately small: one thread accepts and answers one connection at a
/// time, each bounded by `requestLimit` bytes of request head and
/// `ioTimeout` (a silent client delays the next scrape by at most that),
/// with at most `backlog` connections queued, and every answer closes the
/// connection. Scrapes come every few seconds from one or two servers; the
/// limits keep anyone else from making it cost more than that. The body is
/// rendered on this thread from the registry, which is thread-safe; the
/// peer's event loops are never involved.
public final class MetricsServer: Sendable {
    public static let requestLimit = 8 << 10
    public static let ioTimeout: Duration = .seconds(2)
    public static let backlog: Int32 = 16
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Where it listens (with the port the kernel chose for port 0).
    public let localAddress: PeerAddress
    private let listener: Int32
    /// An eventfd that tells the thread to stop.
    private let wake: Int32
    private let finished = DispatchSemaphore(value: 0)

    /// `HOST:PORT`, `[v6]:PORT`, or a bare `:PORT`, which here means the
    /// loopback address: metrics are off the network unless asked for.
    public static func address(parsing text: String) throws -> PeerAddress {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        return try PeerAddress(parsing: trimmed.hasPrefix(":") ? "127.0.0.1" + trimmed : trimmed)
    }

    /// Binds and starts serving; `body` renders the exposition text per scrape.
    public init(address: PeerAddress, logger: Logger, body: @escaping @Sendable () -> [UInt8]) throws {
        let family = address.storage.family
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TransportError.system(call: "socket", errno: errno) }
        var wakeFD: Int32 = -1
        do {
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if address.storage.withSockaddr({ bind(fd, $0, $1) }) != 0 {
                let e = errno
                if e == EADDRINUSE { throw TransportError.addressInUse(address: address.description) }
                throw TransportError.system(call: "bind \(address)", errno: e)
            }
            guard listen(fd, Self.backlog) == 0 else { throw TransportError.system(call: "listen", errno: errno) }
            wakeFD = eventfd(0, Int32(EFD_CLOEXEC))
            guard wakeFD >= 0 else { throw TransportError.system(call: "eventfd", errno: errno) }
        } catch {
            close(fd)
            throw error
        }
        listener = fd
        wake = wakeFD
        localAddress = PeerAddress(storage: Self.boundAddress(fd))
        let thread = Thread { [listener, wake, finished] in
            Self.serve(listener: listener, wake: wake, logger: logger, body: body)
            finished.signal()
        }
        thread.name = "metrics \(localAddress)"
        thread.start()
        logger.info("metrics at http://\(localAddress)/metrics")
    }

    private static func boundAddress(_ fd: Int32) -> SocketAddressStorage {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddressStorage($0, length: length) }
        }
    }

    /// Stops accepting and waits for the thread; the socket is closed.
    public func stop() {
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        finished.wait()
        close(listener)
        close(wake)
    }

    private static func serve(listener: Int32, wake: Int32, logger: Logger, body: @Sendable () -> [UInt8]) {
        while true {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: wake, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, -1)
            if rc < 0 {
                if errno == EINTR { continue }
                logger.error("metrics listener poll failed: errno \(errno)")
                return
            }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
            answer(client, deadline: .now + ioTimeout, logger: logger, body: body)
            close(client)
        }
    }

    /// Reads the request head, then sends one response.
    private static func answer(_ client: Int32, deadline: ContinuousClock.Instant, logger: Logger, body: () -> [UInt8]) {
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while head.firstRange(of: end) == nil {
            guard head.count < requestLimit else {
                return respond(client, status: "431 Request Header Fields Too Large", body: Array("request too large\n".utf8), deadline: deadline)
            }
            guard wait(client, for: POLLIN, until: deadline) else { return }
            let n = read(client, &buffer, min(buffer.count, requestLimit - head.count))
            if n < 0, errno == EAGAIN || errno == EINTR { continue }
            guard n > 0 else { return }
            head += buffer[..<n]
        }
        let requestLine = String(decoding: head.prefix { $0 != UInt8(ascii: "\r") }, as: UTF8.self)
        let parts = requestLine.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return respond(client, status: "400 Bad Request", body: Array("expected GET /metrics HTTP/1.1\n".utf8), deadline: deadline)
        }
        guard parts[0] == "GET" || parts[0] == "HEAD" else {
            return respond(client, status: "405 Method Not Allowed", body: Array("only GET\n".utf8), deadline: deadline,
                           extraHeaders: "Allow: GET, HEAD\r\n")
        }
        guard parts[1] == "/metrics" || parts[1].hasPrefix("/metrics?") else {
            return respond(client, status: "404 Not Found", body: Array("metrics are at /metrics\n".utf8), deadline: deadline)
        }
        let text = body()
        respond(client, status: "200 OK", body: parts[0] == "HEAD" ? [] : text, deadline: deadline, contentType: contentType,
                contentLength: text.count)
        logger.trace("metrics scraped", metadata: ["bytes": "\(text.count)"])
    }

    private static func respond(_ client: Int32, status: String, body: [UInt8], deadline: ContinuousClock.Instant,
                                contentType: String = "text/plain; charset=utf-8", contentLength: Int? = nil,
                                extraHeaders: String = "") {
        let header = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(contentLength ?? body.count)\r\n"
            + extraHeaders + "Connection: close\r\n\r\n"
        var bytes = Array(header.utf8) + body
        var sent = 0
        while sent < bytes.count {
            guard wait(client, for: POLLOUT, until: deadline) else { return }
            let n = bytes.withUnsafeMutableBytes { send(client, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                return
            }
            sent += n
        }
    }

    /// Polls for `events` until the deadline; false when it passed first.
    private static func wait(_ fd: Int32, for events: Int32, until deadline: ContinuousClock.Instant) -> Bool {
        while true {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return false }
            var p = pollfd(fd: fd, events: Int16(events), revents: 0)
            let rc = poll(&p, 1, Int32(max(1, left.milliseconds.rounded(.up))))
            if rc > 0 { return true }
            if rc < 0, errno == EINTR { continue }
            if rc == 0 { continue }
            return false
        }
    }
}
