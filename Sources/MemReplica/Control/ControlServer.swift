import Foundation
import Logging
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Answers `memreplica status` (and later commands) on a local Unix socket.
///
/// The socket is the access control: mode 0600 in a 0700 folder, so only
/// the owner may ask. One JSON request line in, one JSON line out, then the
/// connection closes. A dedicated thread accepts and reads requests one at a
/// time with a size and time bound (a silent client delays the next one by
/// at most `ioTimeout`), so a stuck client never touches the QUIC loop or
/// the Swift concurrency pool; only the answer is computed asynchronously.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest) async -> ControlResponse

    public let path: String
    public static let requestLimit = 64 << 10
    public static let ioTimeout: Duration = .seconds(2)

    private let listener: UnixSocket
    private let wake: (readEnd: FileDescriptor, writeEnd: FileDescriptor)
    private let socketFile: FileIdentity
    private let handler: Handler
    private let logger: Logger
    private let exit = Locked(ExitState())

    private struct ExitState {
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Binds the socket (replacing a stale one left by a crashed peer) and
    /// starts serving.
    public init(path: String, logger: Logger, handler: @escaping Handler) throws {
        self.path = path
        self.logger = logger
        self.handler = handler
        try Self.clearStaleSocket(at: path, logger: logger)
        let listener = try UnixSocket.make(path: path)
        do {
            try listener.bindPrivately()
            try listener.listen()
            socketFile = try FileIdentity(path: path)
            wake = try FileDescriptor.pipe()
        } catch {
            listener.close()
            throw error
        }
        self.listener = listener
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "control \(path)"
        thread.start()
    }

    /// Stops accepting, waits for the accept thread and removes the socket
    /// file (if it is still ours).
    public func stop() async {
        _ = try? wake.writeEnd.writeAll([UInt8(1)])
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = exit.withLock { state -> Bool in
                if state.finished { return true }
                state.waiters.append(c)
                return false
            }
            if resumeNow { c.resume() }
        }
        listener.close()
        try? wake.readEnd.close()
        try? wake.writeEnd.close()
        if (try? FileIdentity(path: path)) == socketFile {
            unlink(path)
        }
    }

    private func acceptLoop() {
        defer {
            let waiters = exit.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.finished = true
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            for w in waiters { w.resume() }
        }
        var fds = [pollfd(fd: listener.fd.rawValue, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wake.readEnd.rawValue, events: Int16(POLLIN), revents: 0)]
        while true {
            let rc = poll(&fds, nfds_t(fds.count), -1)
            if rc < 0 {
                if errno == EINTR { continue }
                logger.error("control socket poll failed: \(Errno(rawValue: errno))")
                return
            }
            if fds[1].revents != 0 { return }
            if fds[0].revents != 0 {
                do {
                    serve(try listener.accept())
                } catch {
                    logger.warning("control socket: \(error)")
                }
            }
        }
    }

    private func serve(_ client: UnixSocket) {
        let deadline = ContinuousClock.now + Self.ioTimeout
        let request: ControlRequest
        do {
            let line = try client.readLine(limit: Self.requestLimit, deadline: deadline)
            do {
                request = try JSONDecoder().decode(ControlRequest.self, from: Data(line))
            } catch {
                throw ControlError.malformed("expected one JSON line like {\"command\":\"status\"}")
            }
        } catch {
            logger.debug("control request rejected: \(error)")
            // A fresh, short deadline: the request's may be what just expired.
            Self.reply(.error("\(error)"), to: client, deadline: .now + .milliseconds(200), logger: logger)
            return
        }
        let handler = self.handler
        let logger = self.logger
        Task {
            let response = await handler(request)
            Self.reply(response, to: client, deadline: ContinuousClock.now + Self.ioTimeout, logger: logger)
        }
    }

    private static func reply(_ response: ControlResponse, to client: UnixSocket,
                              deadline: ContinuousClock.Instant, logger: Logger) {
        defer { client.close() }
        do {
            var bytes = Array(try StatusReport.makeEncoder().encode(response))
            bytes.append(UInt8(ascii: "\n"))
            try client.send(bytes, deadline: deadline)
        } catch {
            logger.debug("control reply not delivered: \(error)")
        }
    }

    /// A socket file nobody answers on is left over from a peer that died;
    /// one that answers belongs to a live peer and must not be stolen.
    private static func clearStaleSocket(at path: String, logger: Logger) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else { throw ControlError.notASocket(path: path) }
        do {
            try UnixSocket.connect(to: path).close()
            throw ControlError.alreadyRunning(path: path)
        } catch ControlError.system(call: "connect", _, let e) where e == .connectionRefused {
            unlink(path)
            logger.info("removed stale control socket \(path)")
        }
    }
}

/// Device and inode of a file, to recognise our own socket at shutdown.
private struct FileIdentity: Equatable, Sendable {
    let device: UInt64
    let inode: UInt64

    init(path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            throw ControlError.system(call: "stat", path: path, errno: Errno(rawValue: errno))
        }
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
    }
}
