import MemReplicaSystem
import Foundation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A local region mapped into this process through the running peer's
/// control socket: the client side of `attach`.
///
/// On a lazy replica the mapping is registered for MISSING faults with a
/// userfaultfd made here, and the descriptor goes to the peer (SCM_RIGHTS),
/// which then serves this process's faults: touching a chunk that has not
/// arrived blocks the touching thread until the peer has pulled it. Touch
/// the mapping only from threads that may block (not the Swift concurrency
/// pool). On a primary or an eager replica the file is simply mapped.
///
/// A writer of a primary (`writable: true`) registers its mapping for
/// userfaultfd write-protection (WP_ASYNC) in this process and passes the
/// descriptor: the peer then finds exactly the pages this process wrote
/// (PAGEMAP_SCAN on /proc/PID/pagemap). Only stores through this mapping
/// count; `pwrite()` to the file does not (see the README's "Dirty
/// tracking: which writes each mode catches").
///
/// The session lasts while this object is attached; `detach()` (or the
/// process's exit) ends it. A lazy replica's bytes are the primary's or an
/// error, never holes: should the peer end the session first (a chunk it
/// cannot serve in time, the primary out of reach, the peer stopping), a
/// watcher thread of this object replaces the mapping in place with
/// private zero pages, which wakes any thread asleep in a fault, and
/// records why (`failure`). Read with `read(offset:count:)`, which throws
/// then, or check `sessionAlive` after reading `bytes` directly. A lazy
/// mapping's address range stays reserved after `detach()` (see there).
public final class AttachedRegion: @unchecked Sendable {
    public let answer: AttachAnswer
    /// The whole region in this process.
    public let bytes: UnsafeMutableRawBufferPointer
    private let socket: UnixSocket?
    private let userfaultfd: Int32
    private let writeTracker: WriteProtectTracker?
    private let mappedLength: Int
    private let session = Locked(Session())
    /// A lazy session's watcher: its stop pipe, and a semaphore it signals on exit.
    private let watcherStop: (read: Int32, write: Int32)?
    private let watcherDone = DispatchSemaphore(value: 0)

    private struct Session {
        /// `detach()` ran, or the watcher retired the mapping.
        var detached = false
        var retired = false
        /// Why the peer ended the session.
        var failure: String?
    }

    public enum Failure: Error, CustomStringConvertible, Equatable {
        case open(path: String, errno: Errno)
        case sizeMismatch(path: String, file: Int, region: Int)
        case system(call: String, errno: Errno)
        /// The peer ended the session before the read finished: the bytes
        /// may be zeros the primary never wrote.
        case notCurrent(reason: String)
        case outOfRange(offset: Int, count: Int, size: Int)

        public var description: String {
            switch self {
            case .open(let path, let e): return "cannot open \(path): \(e)"
            case .sizeMismatch(let path, let file, let region):
                return "\(path) holds \(file) bytes but the peer says the region has \(region)"
            case .system(let call, let e): return "\(call) failed: \(e)"
            case .notCurrent(let reason): return "\(reason): the bytes read are not the primary's"
            case .outOfRange(let offset, let count, let size):
                return "bytes \(offset)..+\(count) are outside the region (\(size) bytes)"
            }
        }
    }

    /// Asks the peer which file backs `region` and what it is, without attaching.
    public static func lookup(controlPath: String, region: String, role: String? = nil,
                              timeout: Duration = ControlServer.ioTimeout) throws -> AttachAnswer {
        let (answer, socket) = try exchange(controlPath: controlPath, request: AttachRequest(region: region, role: role),
                                            descriptor: -1, timeout: timeout)
        socket.close()
        return answer
    }

    /// Maps `region` (writable or read-only) and, on a lazy replica,
    /// attaches the mapping so the peer serves its faults.
    public init(controlPath: String, region: String, role: String? = nil, writable: Bool = false,
                timeout: Duration = ControlServer.ioTimeout) throws {
        let found = try Self.lookup(controlPath: controlPath, region: region, role: role, timeout: timeout)
        let p = try Self.map(found, writable: writable)
        let page = Int(getpagesize())
        let length = (found.size + page - 1) / page * page
        mappedLength = found.size
        bytes = UnsafeMutableRawBufferPointer(start: p, count: found.size)
        if writable, found.role != "primary" {
            munmap(p, found.size)
            throw ControlError.refused("region '\(region)' is a replica: only replication writes it")
        }
        guard found.lazy || writable else {
            answer = found
            socket = nil
            userfaultfd = -1
            writeTracker = nil
            watcherStop = nil
            return
        }
        let attach = { (request: AttachRequest, descriptor: Int32) throws -> (AttachAnswer, UnixSocket) in
            try Self.attach(controlPath: controlPath, request: request, descriptor: descriptor, timeout: timeout)
        }
        if writable {
            let attached: (answer: AttachAnswer, session: UnixSocket, tracker: WriteProtectTracker)
            do {
                attached = try Self.attachWriter(bytes, region: region, chunkSize: found.chunkSize, length: length, attach)
            } catch {
                munmap(p, found.size)
                throw error
            }
            answer = attached.answer
            socket = attached.session
            userfaultfd = -1
            writeTracker = attached.tracker
            watcherStop = nil
            return
        }
        writeTracker = nil
        let attached: (answer: AttachAnswer, session: UnixSocket, userfaultfd: Int32, stop: (read: Int32, write: Int32))
        do {
            attached = try Self.attachLazy(p, region: region, role: role, length: length, attach)
        } catch {
            munmap(p, found.size)
            throw error
        }
        answer = attached.answer
        socket = attached.session
        userfaultfd = attached.userfaultfd
        watcherStop = attached.stop
        startWatcher()
    }

    /// Opens and maps the file `found` names, checking its size.
    private static func map(_ found: AttachAnswer, writable: Bool) throws -> UnsafeMutableRawPointer {
        // userfaultfd registers only mappings that may become writable
        // (VM_MAYWRITE): a lazy replica's file is opened read-write even
        // when it is mapped read-only.
        let fd = open(found.path, (writable || found.lazy ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else { throw Failure.open(path: found.path, errno: Errno(rawValue: errno)) }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Failure.open(path: found.path, errno: Errno(rawValue: errno)) }
        guard Int(st.st_size) == found.size else {
            throw Failure.sizeMismatch(path: found.path, file: Int(st.st_size), region: found.size)
        }
        let p = mmap(nil, found.size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw Failure.system(call: "mmap", errno: Errno(rawValue: errno)) }
        return p
    }

    /// Sends an attach request with `descriptor`; the answer must say the
    /// mapping is attached.
    private static func attach(controlPath: String, request: AttachRequest, descriptor: Int32,
                               timeout: Duration) throws -> (AttachAnswer, UnixSocket) {
        let (answer, session) = try exchange(controlPath: controlPath, request: request, descriptor: descriptor, timeout: timeout)
        guard answer.attached else {
            session.close()
            throw ControlError.malformed("the peer answered without attaching the mapping")
        }
        return (answer, session)
    }

    /// A writer of a primary: the mapping is write-protected (WP_ASYNC) and
    /// the descriptor goes to the peer, which scans what was written.
    private static func attachWriter(_ bytes: UnsafeMutableRawBufferPointer, region: String, chunkSize: Int, length: Int,
                                     _ attach: (AttachRequest, Int32) throws -> (AttachAnswer, UnixSocket)) throws
        -> (answer: AttachAnswer, session: UnixSocket, tracker: WriteProtectTracker) {
        let tracker = try WriteProtectTracker(memory: bytes, chunkSize: chunkSize)
        let request = AttachRequest(region: region, role: "primary", base: UInt64(UInt(bitPattern: bytes.baseAddress)),
                                    length: length)
        let (answer, session) = try attach(request, tracker.userfaultfdDescriptor)
        return (answer, session, tracker)
    }

    /// A lazy replica: the mapping is registered for MISSING faults before
    /// its first touch (no read may see a hole), and the userfaultfd goes
    /// to the peer, which serves them. Also makes the watcher's stop pipe.
    private static func attachLazy(_ p: UnsafeMutableRawPointer, region: String, role: String?, length: Int,
                                   _ attach: (AttachRequest, Int32) throws -> (AttachAnswer, UnixSocket)) throws
        -> (answer: AttachAnswer, session: UnixSocket, userfaultfd: Int32, stop: (read: Int32, write: Int32)) {
        var uffd: UserFaultFD?
        do {
            let opened: UserFaultFD
            do { opened = try UserFaultFD.open() } catch { throw Failure.system(call: "userfaultfd", errno: error.syscall) }
            uffd = opened
            do { try opened.handshake(requesting: .missingShmem) } catch { throw Failure.system(call: "UFFDIO_API", errno: error) }
            do { try opened.registerMissing(p, length: length) } catch { throw Failure.system(call: "UFFDIO_REGISTER", errno: error) }
            let request = AttachRequest(region: region, role: role, base: UInt64(UInt(bitPattern: p)), length: length)
            let (answer, session) = try attach(request, opened.rawValue)
            var pipe: [Int32] = [-1, -1]
            guard Glibc.pipe(&pipe) == 0 else {
                session.close()
                throw Failure.system(call: "pipe", errno: Errno(rawValue: errno))
            }
            for fd in pipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            return (answer, session, opened.rawValue, (pipe[0], pipe[1]))
        } catch {
            try? uffd?.close()
            throw error
        }
    }

    deinit { detach() }

    /// Why the peer ended the session (nil while it lasts, or after our own
    /// `detach()`).
    public var failure: String? { session.withLock { $0.failure } }

    /// Copies `count` bytes from `offset`. Throws `Failure.notCurrent` when
    /// the peer ended the session before the copy finished (or before it
    /// began): those bytes may be zeros the primary never wrote. Touching a
    /// lazy replica may block: call from a thread that may block.
    public func read(offset: Int, count: Int) throws -> [UInt8] {
        guard offset >= 0, count >= 0, offset <= bytes.count, count <= bytes.count - offset else {
            throw Failure.outOfRange(offset: offset, count: count, size: bytes.count)
        }
        if let failure { throw Failure.notCurrent(reason: failure) }
        let out = Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]))
        // After the copy: a session that ended during it woke a waiting
        // thread onto zeros.
        if let failure { throw Failure.notCurrent(reason: failure) }
        return out
    }

    /// Waits for the peer to end the session (or for `detach`), then
    /// retires the mapping so that no thread waits on a chunk that cannot
    /// come, and records the peer's reason.
    private func startWatcher() {
        guard let socket, let stop = watcherStop else { return }
        let done = watcherDone
        let thread = Thread { [weak self] in
            defer { done.signal() }
            var fds = [pollfd(fd: socket.fd.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stop.read, events: Int16(POLLIN), revents: 0)]
            while true {
                let rc = poll(&fds, 2, -1)
                if rc < 0 && errno == EINTR { continue }
                if rc < 0 || fds[1].revents != 0 { return }
                if fds[0].revents != 0 { break }
            }
            let line = (try? socket.readLine(limit: 4096, deadline: .now + .milliseconds(500))) ?? []
            var reason = "the peer ended the session"
            if case .error(let message)? = try? StatusReport.makeDecoder().decode(ControlResponse.self, from: Data(line)) {
                reason += ": \(message)"
            }
            self?.retire(failure: reason)
        }
        thread.name = "memreplica session \(answer.region)"
        thread.start()
    }

    /// Replaces a lazy mapping in place with private zero pages and closes
    /// the descriptor (once): a thread asleep in a fault wakes onto zeros in
    /// this process, never onto the file, where its read would put a page
    /// of zeros into the region's page cache that the peer's later install
    /// of the real bytes would find present and skip.
    private func retire(failure: String?) {
        let first = session.withLock { s -> Bool in
            if let failure, !s.detached, s.failure == nil { s.failure = failure }
            defer { s.retired = true }
            return !s.retired
        }
        guard first, userfaultfd >= 0 else { return }
        let zeros = mmap(bytes.baseAddress, mappedLength, PROT_READ,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
        if zeros == MAP_FAILED { munmap(bytes.baseAddress, mappedLength) }
        Glibc.close(userfaultfd)
    }

    /// Whether the peer still serves this mapping (false once it closed the
    /// session, e.g. because it stopped). Always true without a session.
    public var sessionAlive: Bool {
        guard let socket else { return true }
        // Polled under the lock `detach` takes before closing the socket: a
        // descriptor number closed meanwhile may already name another file.
        return session.withLock { s in
            guard !s.detached, s.failure == nil else { return false }
            var pfd = pollfd(fd: socket.fd.rawValue, events: Int16(POLLIN), revents: 0)
            return poll(&pfd, 1, 0) == 0
        }
    }

    /// Ends the session (waiting, up to the timeout, until the peer is
    /// done with the mapping: a writer's last stores are scanned) and
    /// unmaps; a lazy mapping becomes read-only zeros instead, its address
    /// range reserved for good. Idempotent.
    public func detach() {
        let first = session.withLock { s -> Bool in defer { s.detached = true }; return !s.detached }
        guard first else { return }
        if let stop = watcherStop {
            // The watcher first: it must not read the session or retire the
            // mapping once they are closed.
            var byte: UInt8 = 1
            _ = Glibc.write(stop.write, &byte, 1)
            watcherDone.wait()
            Glibc.close(stop.read)
            Glibc.close(stop.write)
        }
        if let socket {
            let deadline = ContinuousClock.now + ControlServer.ioTimeout
            if (try? socket.send(Array("detach\n".utf8), deadline: deadline)) != nil {
                _ = try? socket.readLine(limit: 256, deadline: deadline)
            }
            socket.close()
        }
        withExtendedLifetime(writeTracker) {}
        guard userfaultfd >= 0 else {
            munmap(bytes.baseAddress, mappedLength)
            return
        }
        // A thread may still sleep in a fault here (the peer could not
        // serve it). Closing the descriptor wakes it to fault again: with
        // the range unmapped that is a SIGSEGV, and with the file still
        // mapped its read would plant a page of zeros in the file. So the
        // mapping becomes private zero pages in place, and those stay (no
        // memory is committed): only the address range is kept, since no
        // thread can be known to be gone.
        retire(failure: nil)
    }

    private static func exchange(controlPath: String, request: AttachRequest, descriptor: Int32,
                                 timeout: Duration) throws -> (AttachAnswer, UnixSocket) {
        let socket: UnixSocket
        do {
            socket = try UnixSocket.connect(to: controlPath)
        } catch ControlError.system(call: "connect", _, let e) where e == .noSuchFileOrDirectory || e == .connectionRefused {
            throw ControlError.noPeerRunning(path: controlPath, stale: e == .connectionRefused)
        }
        do {
            let deadline = ContinuousClock.now + timeout
            var line = Array(try JSONEncoder().encode(request))
            line.append(UInt8(ascii: "\n"))
            try socket.send(line, passing: descriptor, deadline: deadline)
            let reply = try socket.readLine(limit: ControlServer.requestLimit, deadline: deadline)
            guard !reply.isEmpty else { throw ControlError.malformed("the peer closed the control connection without answering") }
            let decoder = StatusReport.makeDecoder()
            if let answer = try? decoder.decode(AttachAnswer.self, from: Data(reply)) { return (answer, socket) }
            if case .error(let message)? = try? decoder.decode(ControlResponse.self, from: Data(reply)) {
                throw ControlError.refused(message)
            }
            throw ControlError.malformed("unreadable answer from the peer (is it the same memreplica version?)")
        } catch {
            socket.close()
            throw error
        }
    }
}
