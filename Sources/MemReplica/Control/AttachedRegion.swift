import Foundation
import QuicShim
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
/// process's exit) ends it. Should the peer end it first (it stops), a
/// thread blocked on a missing chunk keeps sleeping until `detach()`
/// closes the descriptor; it then reads zeros, so check `sessionAlive`
/// before trusting bytes read across a peer restart. A lazy mapping's
/// address range stays reserved after `detach()` (see there).
public final class AttachedRegion: @unchecked Sendable {
    public let answer: AttachAnswer
    /// The whole region in this process.
    public let bytes: UnsafeMutableRawBufferPointer
    private let socket: UnixSocket?
    private let userfaultfd: Int32
    private let writeTracker: WriteProtectTracker?
    private let mappedLength: Int
    private let detached = Locked(false)

    public enum Failure: Error, CustomStringConvertible, Equatable {
        case open(path: String, errno: Errno)
        case sizeMismatch(path: String, file: Int, region: Int)
        case system(call: String, errno: Errno)

        public var description: String {
            switch self {
            case .open(let path, let e): return "cannot open \(path): \(e)"
            case .sizeMismatch(let path, let file, let region):
                return "\(path) holds \(file) bytes but the peer says the region has \(region)"
            case .system(let call, let e): return "\(call) failed: \(e)"
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
        let page = Int(getpagesize())
        let length = (found.size + page - 1) / page * page
        let p = mmap(nil, found.size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw Failure.system(call: "mmap", errno: Errno(rawValue: errno)) }
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
            return
        }
        if writable {
            do {
                let tracker = try WriteProtectTracker(memory: bytes, chunkSize: found.chunkSize)
                let request = AttachRequest(region: region, role: "primary", base: UInt64(UInt(bitPattern: p)), length: length)
                let (attachedAnswer, session) = try Self.exchange(controlPath: controlPath, request: request,
                                                                  descriptor: tracker.userfaultfdDescriptor, timeout: timeout)
                guard attachedAnswer.attached else {
                    session.close()
                    throw ControlError.malformed("the peer answered without attaching the mapping")
                }
                answer = attachedAnswer
                socket = session
                userfaultfd = -1
                writeTracker = tracker
                return
            } catch {
                munmap(p, found.size)
                throw error
            }
        }
        writeTracker = nil
        // Registered before the first touch: no read may see a hole.
        let uffd = qs_uffd_open(0)
        do {
            guard uffd >= 0 else { throw Failure.system(call: "userfaultfd", errno: Errno(rawValue: -uffd)) }
            var available: UInt64 = 0
            var rc = qs_uffd_api(uffd, qs_uffd_feature_missing_shmem(), &available)
            guard rc == 0 else { throw Failure.system(call: "UFFDIO_API", errno: Errno(rawValue: -rc)) }
            rc = qs_uffd_register_missing(uffd, p, length)
            guard rc == 0 else { throw Failure.system(call: "UFFDIO_REGISTER", errno: Errno(rawValue: -rc)) }
            let request = AttachRequest(region: region, role: role, base: UInt64(UInt(bitPattern: p)), length: length)
            let (attachedAnswer, session) = try Self.exchange(controlPath: controlPath, request: request,
                                                              descriptor: uffd, timeout: timeout)
            guard attachedAnswer.attached else {
                session.close()
                throw ControlError.malformed("the peer answered without attaching the mapping")
            }
            answer = attachedAnswer
            socket = session
            userfaultfd = uffd
        } catch {
            munmap(p, found.size)
            if uffd >= 0 { Glibc.close(uffd) }
            throw error
        }
    }

    deinit { detach() }

    /// Whether the peer still serves this mapping (false once it closed the
    /// session, e.g. because it stopped). Always true without a session.
    public var sessionAlive: Bool {
        guard let socket else { return true }
        // Polled under the lock `detach` takes before closing the socket: a
        // descriptor number closed meanwhile may already name another file.
        return detached.withLock { detached in
            guard !detached else { return false }
            var pfd = pollfd(fd: socket.fd.rawValue, events: Int16(POLLIN), revents: 0)
            return poll(&pfd, 1, 0) == 0
        }
    }

    /// Ends the session (waiting, up to the timeout, until the peer is
    /// done with the mapping: a writer's last stores are scanned) and
    /// unmaps; a lazy mapping becomes read-only zeros instead, its address
    /// range reserved for good. Idempotent.
    public func detach() {
        let first = detached.withLock { d -> Bool in defer { d = true }; return !d }
        guard first else { return }
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
        // mapped its read would put a page of zeros into the region's page
        // cache, where the peer's later install of the real bytes finds a
        // page present and skips it. So the file mapping is first replaced,
        // in place, by private zero pages (no memory is committed), and
        // those stay: a woken thread reads zeros and nothing else changes.
        // Only the address range is kept; no thread can be known to be gone.
        let zeros = mmap(bytes.baseAddress, mappedLength, PROT_READ,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
        if zeros == MAP_FAILED { munmap(bytes.baseAddress, mappedLength) }
        Glibc.close(userfaultfd)
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
