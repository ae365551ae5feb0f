import MemReplicaSystem
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
    /// Decides an `attach` request on the control thread; must not block.
    public typealias AttachHandler = @Sendable (AttachRequest, AttachingProcess) -> AttachOutcome

    public let path: String
    public static let requestLimit = 64 << 10
    public static let ioTimeout: Duration = .seconds(2)
    /// Open attach sessions at once, all regions together (each region
    /// bounds its own as well).
    public static let maxSessions = 64

    private let listener: UnixSocket
    private let wake: (readEnd: FileDescriptor, writeEnd: FileDescriptor)
    private let socketFile: FileIdentity
    private let handler: Handler
    private let attachHandler: AttachHandler?
    private let logger: Logger
    private let exit = Locked(ExitState())
    /// Sessions to end, asked from other threads (`AttachingProcess.endSession`).
    private let endRequests = Locked<[(id: Int, reason: String)]>([])
    private let nextSessionID = Locked(0)
    /// False once `stop` is about to close the wake-up pipe: a session end
    /// asked later (a mirror stopping after us) must not write to a closed
    /// descriptor number, which may already name another file.
    private let wakeOpen = Locked(true)
    /// What a byte on the wake-up pipe means.
    private static let wakeToStop: UInt8 = 1
    private static let wakeToEndSessions: UInt8 = 2

    private struct ExitState {
        var finished = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Binds the socket (replacing a stale one left by a crashed peer) and
    /// starts serving.
    public init(path: String, logger: Logger, attachHandler: AttachHandler? = nil,
                handler: @escaping Handler) throws {
        self.path = path
        self.logger = logger
        self.handler = handler
        self.attachHandler = attachHandler
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
        wakeOpen.withLock { open in
            if open { _ = try? wake.writeEnd.writeAll([Self.wakeToStop]) }
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = exit.withLock { state -> Bool in
                if state.finished { return true }
                state.waiters.append(c)
                return false
            }
            if resumeNow { c.resume() }
        }
        // Once: a second stop must not close descriptor numbers reused since.
        let first = wakeOpen.withLock { open -> Bool in
            guard open else { return false }
            open = false
            try? wake.readEnd.close()
            try? wake.writeEnd.close()
            return true
        }
        guard first else { return }
        listener.close()
        if (try? FileIdentity(path: path)) == socketFile {
            unlink(path)
        }
    }

    /// An attached process: its connection, and what to undo when it ends.
    private struct Session {
        let id: Int
        let socket: UnixSocket
        let detach: @Sendable () -> Void
    }

    private func acceptLoop() {
        var sessions: [Session] = []
        defer {
            for session in sessions { end(session, reason: "the peer is stopping") }
            let waiters = exit.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.finished = true
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            for w in waiters { w.resume() }
        }
        while true {
            // A session's socket turns readable when the client closes it
            // (or sends something, which the protocol does not allow): either
            // way the attachment ends.
            var fds = [pollfd(fd: listener.fd.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.readEnd.rawValue, events: Int16(POLLIN), revents: 0)]
                + sessions.map { pollfd(fd: $0.socket.fd.rawValue, events: Int16(POLLIN), revents: 0) }
            let rc = poll(&fds, nfds_t(fds.count), -1)
            if rc < 0 {
                if errno == EINTR { continue }
                logger.error("control socket poll failed: \(Errno(rawValue: errno))")
                return
            }
            if fds[1].revents != 0 {
                var bytes = [UInt8](repeating: 0, count: 64)
                let n = Glibc.read(wake.readEnd.rawValue, &bytes, bytes.count)
                if n <= 0 || bytes[..<n].contains(Self.wakeToStop) { return }
                let requests = endRequests.withLock { r in defer { r = [] }; return r }
                for request in requests {
                    guard let index = sessions.firstIndex(where: { $0.id == request.id }) else { continue }
                    end(sessions.remove(at: index), reason: request.reason)
                }
                continue
            }
            let ended = Set(fds.indices.dropFirst(2).filter { fds[$0].revents != 0 }.map { $0 - 2 })
            for index in ended.sorted(by: >) {
                end(sessions.remove(at: index))
            }
            if fds[0].revents != 0 {
                do {
                    serve(try listener.accept(), sessions: &sessions)
                } catch {
                    logger.warning("control socket: \(error)")
                }
            }
        }
    }

    /// Ends a session. A client that says `detach` first (a line) is told
    /// when the peer is done with its mapping (`{"detached":true}`): an
    /// attached writer unmaps only after its last writes were scanned.
    /// With a `reason`, the peer ends the session: the client hears why
    /// first (`{"error": reason}`), so its readers fail rather than wait.
    private func end(_ session: Session, reason: String? = nil) {
        if let reason {
            var line = (try? Array(StatusReport.makeEncoder().encode(ControlResponse.error(reason)))) ?? []
            line.append(UInt8(ascii: "\n"))
            try? session.socket.send(line, deadline: .now + .milliseconds(200))
            logger.info("attach session ended by the peer: \(reason)")
        }
        let line = reason == nil ? try? session.socket.readLine(limit: 64, deadline: .now + .milliseconds(100)) : nil
        session.detach()
        if line.map({ String(decoding: $0, as: UTF8.self) }) == "detach" {
            try? session.socket.send(Array("{\"detached\":true}\n".utf8), deadline: .now + .milliseconds(200))
        }
        session.socket.close()
        logger.debug("attach session ended")
    }

    private func serve(_ client: UnixSocket, sessions: inout [Session]) {
        let deadline = ContinuousClock.now + Self.ioTimeout
        let request: ControlRequest
        let line: [UInt8]
        var descriptors: [Int32]
        do {
            (line, descriptors) = try client.readLineWithDescriptors(limit: Self.requestLimit, deadline: deadline,
                                                                     maxDescriptors: 1)
            do {
                request = try JSONDecoder().decode(ControlRequest.self, from: Data(line))
            } catch {
                for d in descriptors { Glibc.close(d) }
                throw ControlError.malformed("expected one JSON line like {\"command\":\"status\"}")
            }
        } catch {
            logger.debug("control request rejected: \(error)")
            // A fresh, short deadline: the request's may be what just expired.
            Self.reply(.error("\(error)"), to: client, deadline: .now + .milliseconds(200), logger: logger)
            return
        }
        if request.command == "attach" {
            serveAttach(line: line, descriptor: descriptors.first, client: client, sessions: &sessions)
            return
        }
        for d in descriptors { Glibc.close(d) }
        let handler = self.handler
        let logger = self.logger
        Task {
            let response = await handler(request)
            Self.reply(response, to: client, deadline: ContinuousClock.now + Self.ioTimeout, logger: logger)
        }
    }

    private func serveAttach(line: [UInt8], descriptor: Int32?, client: UnixSocket, sessions: inout [Session]) {
        func refuse(_ message: String) {
            if let descriptor { Glibc.close(descriptor) }
            logger.debug("attach refused: \(message)")
            Self.reply(.error(message), to: client, deadline: .now + .milliseconds(200), logger: logger)
        }
        guard let attachHandler else { return refuse("this peer does not accept attachments") }
        let request: AttachRequest
        do {
            request = try JSONDecoder().decode(AttachRequest.self, from: Data(line))
        } catch {
            return refuse("malformed attach request: expected {\"command\":\"attach\",\"region\":NAME,"
                          + "\"base\":ADDRESS,\"length\":BYTES} (base and length with a descriptor)")
        }
        guard let pid = client.peerProcessID else { return refuse("cannot tell which process is attaching") }
        if descriptor != nil, sessions.count >= Self.maxSessions {
            return refuse("too many attached processes (at most \(Self.maxSessions))")
        }
        let id = nextSessionID.withLock { $0 += 1; return $0 }
        let endRequests = self.endRequests
        let wakeEnd = wake.writeEnd
        let wakeOpen = self.wakeOpen
        let endSession: @Sendable (String) -> Void = { reason in
            endRequests.withLock { $0.append((id, reason)) }
            wakeOpen.withLock { open in
                if open { _ = try? wakeEnd.writeAll([Self.wakeToEndSessions]) }
            }
        }
        let process = AttachingProcess(pid: pid, userfaultfd: descriptor, endSession: descriptor == nil ? nil : endSession)
        switch attachHandler(request, process) {
        case .refused(let message):
            refuse(message)
        case .accepted(let answer, let detach):
            // A lookup answered while a descriptor came along: nobody took it.
            if detach == nil, let descriptor { Glibc.close(descriptor) }
            var bytes = (try? Array(StatusReport.makeEncoder().encode(answer))) ?? []
            bytes.append(UInt8(ascii: "\n"))
            do {
                try client.send(bytes, deadline: .now + Self.ioTimeout)
            } catch {
                logger.debug("attach answer not delivered: \(error)")
                detach?()
                client.close()
                return
            }
            if let detach {
                sessions.append(Session(id: id, socket: client, detach: detach))
                logger.debug("process \(pid) attached to region \(answer.region)")
            } else {
                client.close()
            }
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
