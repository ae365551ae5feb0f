@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaSystem
import LinuxShim
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

private func quiet() -> Logger {
    var l = Logger(label: "attach-test")
    l.logLevel = .critical
    return l
}

private func eventually(_ what: String, seconds: Double, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// Runs a shell command line as a child process; waits without blocking a
/// pool thread (the test process may be the one serving the child's faults).
func runShell(_ line: String, seconds: Double = 60) async throws -> Int32 {
    let child = try ChildProcess("/bin/sh", ["-c", line], quiet: false)
    let deadline = ContinuousClock.now + .seconds(seconds)
    var raw: Int32 = 0
    while waitpid(child.pid, &raw, WNOHANG) != child.pid {
        if ContinuousClock.now > deadline {
            kill(child.pid, SIGKILL)
            waitpid(child.pid, &raw, 0)
            throw TimeoutError(what: line, seconds: seconds)
        }
        try await Task.sleep(for: .milliseconds(5))
    }
    return (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
}

func fileSHA(_ path: String) throws -> String {
    sha256Hex(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
}

/// A lazy replica served in this process (no background pull, so only
/// faults bring chunks in) with a control socket accepting attachments.
struct LazyFixture {
    let root: String
    let primary: Region
    let replica: Region
    let mirror: PostCopyMirror
    let pair: ReplicationPair
    let running: Task<Void, any Error>
    let server: ControlServer
    var socket: String { root + "/c.sock" }

    /// `replicaFile`: the replica's backing file (a memfd when nil).
    static func make(size: Int, seed: UInt64, faultWaitLimit: Duration = .seconds(10),
                     replicaFile: String? = nil) async throws -> LazyFixture {
        let root = NSTemporaryDirectory() + "mr-attach-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let primary = try Region(name: "lazy", backing: .memory, size: size, chunkSize: 65536)
        fillPattern(primary.bytes, seed: seed)
        let pair = try await ReplicationPair(exports: RegionExports([.init(region: primary)], logger: quiet()))
        // A lazy replica's file stays sparse: its holes are what it lacks.
        let replica = try Region(name: "lazy", backing: replicaFile.map { .file(path: $0) } ?? .memory, size: size,
                                 chunkSize: 65536, allocation: .sparse)
        var options = PostCopyMirror.Options()
        options.backgroundPull = false
        options.faultWaitLimit = faultWaitLimit
        let mirror = try PostCopyMirror(region: replica, options: options)
        let running = Task { try await mirror.run(over: pair.client) }
        try await eventually("the lazy subscription", seconds: 10) { mirror.progress.subscribed }
        let server = try ControlServer(path: root + "/c.sock", logger: quiet(), attachHandler: { request, process in
            guard request.region == "lazy" else { return .refused("no region named '\(request.region)' on this peer") }
            if request.role == "primary" { return .refused("region 'lazy' is a replica here, not a primary") }
            return PeerService.attach(request, from: process, toLazy: mirror, logger: quiet())
        }) { _ in .error("status-marker") }
        return LazyFixture(root: root, primary: primary, replica: replica, mirror: mirror, pair: pair,
                           running: running, server: server)
    }

    func close() async {
        await server.stop()
        running.cancel()
        await pair.close()
        _ = await running.result
        mirror.stop()
        try? FileManager.default.removeItem(atPath: root)
    }

    /// Runs `body` with a fixture that is closed (and awaited) however the
    /// body ends, so nothing of it spills into the next test.
    static func with(size: Int, seed: UInt64, _ body: (LazyFixture) async throws -> Void) async throws {
        let f = try await make(size: size, seed: seed)
        do {
            try await body(f)
        } catch {
            await f.close()
            throw error
        }
        await f.close()
    }
}

@Suite("Attached processes (control socket attach)", .serialized)
struct AttachTests {
    @Test("a second mapping with its own userfaultfd is served through the shared page cache and woken")
    func sharedPageCache() async throws {
        let path = "/dev/shm/mr-pagecache-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }
        let region = try Region(name: "pc", backing: .file(path: path), size: 1 << 20, chunkSize: 65536, allocation: .sparse)
        let faulted = Locked<[Int]>([])
        let handler = try MissingFaultHandler(region: region) { chunk, _, _ in
            faulted.withLock { $0.append(chunk) }
            return true
        }
        defer { handler.stop() }
        // The "client": another mapping of the file, registered on a uffd of its own.
        let fd = open(path, O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let client = try #require(mmap(nil, 1 << 20, PROT_READ, MAP_SHARED, fd, 0))
        let uffd = qs_uffd_open(0)
        try #require(uffd >= 0)
        var available: UInt64 = 0
        try #require(qs_uffd_api(uffd, qs_uffd_feature_missing_shmem(), &available) == 0)
        try #require(qs_uffd_register_missing(uffd, client, 1 << 20) == 0)
        let id = try #require(handler.addClient(uffd: uffd, base: UInt64(UInt(bitPattern: client)), length: 1 << 20))
        defer { handler.removeClient(id) }

        let offset = 5 * 65536 + 123
        let address = UInt(bitPattern: client)
        let read = BlockingRead<UInt8> { UnsafeRawPointer(bitPattern: address)!.load(fromByteOffset: offset, as: UInt8.self) }
        // Unmapped only once the reader is through: a reader still asleep in
        // its fault (the test failed) would crash the run when woken on a hole
        // that is no longer mapped.
        defer { if read.value != nil { munmap(client, 1 << 20) } }
        try await eventually("the client's fault", seconds: 10) { faulted.withLock { $0.contains(5) } }
        try await read.waitUntilAsleepInFault()
        #expect(read.value == nil, "the client read a hole instead of waiting")
        let chunk = [UInt8](repeating: 0xA7, count: 65536)
        try chunk.withUnsafeBytes { try handler.install(chunk: 5, bytes: $0) }
        #expect(try await read.wait(seconds: 10) == 0xA7)
        // The peer's own mapping holds the page too: one page in the page cache.
        #expect(region.bytes[offset] == 0xA7)
    }

    @Test("while lent to a loop, the loop reads attached processes' faults (and ours) through one descriptor; the handler thread leaves them")
    func clientFaultsOnTheLoop() async throws {
        let path = "/dev/shm/mr-loopfaults-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }
        let size = 1 << 20, chunk = 65536
        let region = try Region(name: "lf", backing: .file(path: path), size: size, chunkSize: chunk, allocation: .sparse)
        // (chunk, read on a loop)
        let faulted = Locked<[(Int, Bool)]>([])
        let handler = try MissingFaultHandler(region: region) { index, loop, _ in
            faulted.withLock { $0.append((index, loop != nil)) }
            return true
        }
        defer { handler.stop() }
        handler.lendToLoop(true)
        let fd = open(path, O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let client = try #require(mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0))
        let uffd = qs_uffd_open(0)
        try #require(uffd >= 0)
        var available: UInt64 = 0
        try #require(qs_uffd_api(uffd, qs_uffd_feature_missing_shmem(), &available) == 0)
        try #require(qs_uffd_register_missing(uffd, client, size) == 0)
        let id = try #require(handler.addClient(uffd: uffd, base: UInt64(UInt(bitPattern: client)), length: size))
        defer { handler.removeClient(id) }

        let loopIdentity = ObjectIdentifier(region)
        /// What the loop does: wait for the descriptor, then serve.
        func serveLikeALoop() -> Bool {
            var pfd = pollfd(fd: handler.descriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 5000) == 1 else { return false }
            return handler.serveOnLoop(loopIdentity)
        }

        let clientByte = Locked<UInt8?>(nil)
        defer { if clientByte.withLock({ $0 }) != nil { munmap(client, size) } }
        let address = UInt(bitPattern: client)
        Thread { clientByte.withLock { $0 = UnsafeRawPointer(bitPattern: address)!.load(fromByteOffset: 5 * chunk + 7, as: UInt8.self) } }.start()
        #expect(serveLikeALoop(), "the client's fault never made the loop's descriptor readable")
        #expect(faulted.withLock { $0.map { "\($0.0)/\($0.1)" } } == ["5/true"])
        try [UInt8](repeating: 0xA7, count: chunk).withUnsafeBytes { try handler.install(chunk: 5, bytes: $0) }
        try await eventually("the client's wake-up", seconds: 10) { clientByte.withLock { $0 } != nil }
        #expect(clientByte.withLock { $0 } == 0xA7)

        // Our own mapping's faults arrive on the same descriptor.
        let ownByte = Locked<UInt8?>(nil)
        let own = UInt(bitPattern: region.bytes.baseAddress)
        Thread { ownByte.withLock { $0 = UnsafeRawPointer(bitPattern: own)!.load(fromByteOffset: 9 * chunk, as: UInt8.self) } }.start()
        #expect(serveLikeALoop(), "our own fault never made the loop's descriptor readable")
        #expect(faulted.withLock { $0.map { "\($0.0)/\($0.1)" } } == ["5/true", "9/true"])
        try [UInt8](repeating: 0x3C, count: chunk).withUnsafeBytes { try handler.install(chunk: 9, bytes: $0) }
        try await eventually("our own wake-up", seconds: 10) { ownByte.withLock { $0 } != nil }
        #expect(ownByte.withLock { $0 } == 0x3C)
    }

    @Test("detach while a thread sleeps in a fault nobody can serve: it wakes reading zeros, and the replica's file is left alone")
    func detachWakesBlockedReader() async throws {
        let f = try await LazyFixture.make(size: 1 << 20, seed: 31)
        let attached = try AttachedRegion(controlPath: f.socket, region: "lazy")
        try await eventually("attach", seconds: 5) { f.mirror.attachedClients == 1 }
        // The primary goes away: the fault below waits for a reconnect.
        f.running.cancel()
        await f.pair.close()
        let offset = 6 * 65536 + 40
        let base = UInt(bitPattern: attached.bytes.baseAddress!)
        let read = BlockingRead<UInt64> { UnsafeRawPointer(bitPattern: base)!.load(fromByteOffset: offset, as: UInt64.self) }
        try await eventually("the fault", seconds: 10) { f.mirror.progress.faults >= 1 }
        try await read.waitUntilAsleepInFault()
        #expect(read.value == nil, "nothing can serve the fault")
        attached.detach()
        #expect(try await read.wait(seconds: 10) == 0)
        // Still missing in the replica, not a page of zeros it would trust.
        #expect(f.mirror.progress.chunksPresent == 0)
        var residency: UInt8 = 1
        let page = UnsafeMutableRawPointer(mutating: f.replica.bytes.baseAddress! + 6 * 65536)
        #expect(mincore(page, Int(getpagesize()), &residency) == 0)
        #expect(residency & 1 == 0, "the woken read must not have put a page into the replica's file")
        await f.close()
    }

    @Test("a reader waiting while the primary is gone gets an error after the fault wait limit, never zeros; nothing lands in the file")
    func readerFailsWhenPrimaryGone() async throws {
        let f = try await LazyFixture.make(size: 1 << 20, seed: 33, faultWaitLimit: .seconds(1))
        let attached = try AttachedRegion(controlPath: f.socket, region: "lazy")
        try await eventually("attach", seconds: 5) { f.mirror.attachedClients == 1 }
        f.running.cancel()
        await f.pair.close()
        let result = Locked<Result<[UInt8], any Error>?>(nil)
        Thread {
            let read = Result { try attached.read(offset: 6 * 65536 + 40, count: 8) }
            result.withLock { $0 = read }
        }.start()
        try await eventually("the reader's answer", seconds: 15) { result.withLock { $0 } != nil }
        guard case .failure(let error)? = result.withLock({ $0 }) else {
            Issue.record("the read returned bytes the primary never sent: \(String(describing: result.withLock { $0 }))")
            return
        }
        #expect("\(error)".contains("the primary has been out of reach"), "\(error)")
        #expect(attached.failure != nil && !attached.sessionAlive)
        #expect(f.mirror.progress.readersFailed == 1)
        var residency: UInt8 = 1
        let page = UnsafeMutableRawPointer(mutating: f.replica.bytes.baseAddress! + 6 * 65536)
        #expect(mincore(page, Int(getpagesize()), &residency) == 0)
        #expect(residency & 1 == 0, "no page of zeros may land in the replica's file")
        attached.detach()
        await f.close()
    }

    @Test("cat and the C client exit 1 with the reason when the primary is gone, instead of printing holes or hanging")
    func catAndCClientFailWhenPrimaryGone() async throws {
        let f = try await LazyFixture.make(size: 1 << 20, seed: 34, faultWaitLimit: .seconds(1))
        f.running.cancel()
        await f.pair.close()
        let exe = try builtExecutable()
        let out = f.root + "/out.bin"
        let started = ContinuousClock.now
        let rc = try await runShell("'\(exe)' cat lazy --control '\(f.socket)' > '\(out)' 2>'\(f.root)/err'", seconds: 30)
        let err = (try? String(contentsOfFile: f.root + "/err", encoding: .utf8)) ?? ""
        #expect(rc == 1, "cat: \(err)")
        #expect(err.contains("out of reach"), "\(err)")
        #expect(ContinuousClock.now - started < .seconds(15))
        let printed = (try? Data(contentsOf: URL(fileURLWithPath: out)))?.count ?? 0
        #expect(printed == 0, "cat wrote \(printed) bytes it could not vouch for")

        let client = try await buildCClient(into: f.root)
        let crc = try await runShell("'\(client)' read '\(f.socket)' lazy '\(f.root)/c.bin' 2>'\(f.root)/cerr'", seconds: 30)
        let cerr = (try? String(contentsOfFile: f.root + "/cerr", encoding: .utf8)) ?? ""
        #expect(crc == 1, "client_test: \(cerr)")
        #expect(cerr.contains("out of reach"), "\(cerr)")
        await f.close()
    }

    @Test("a chunk that cannot be installed (full tmpfs) is retried, then its reader gets an error; the file holds only the primary's bytes",
          .enabled(if: getuid() == 0, "mounts a small tmpfs (root only)"))
    func installFailureNeverPlantsZeros() async throws {
        let mountPoint = NSTemporaryDirectory() + "mr-full-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=2m") == 0, "mount: \(String(cString: strerror(errno)))")
        defer {
            umount2(mountPoint, Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: mountPoint)
        }
        let path = mountPoint + "/replica"
        let f = try await LazyFixture.make(size: 1 << 20, seed: 35, faultWaitLimit: .seconds(2), replicaFile: path)
        let attached = try AttachedRegion(controlPath: f.socket, region: "lazy")
        // The file system fills up after the replica started: 256 KiB stay free.
        try Data(count: (2 << 20) - (256 << 10)).write(to: URL(fileURLWithPath: mountPoint + "/filler"))
        // Four chunks fill what is left.
        let first = Locked<Result<[UInt8], any Error>?>(nil)
        Thread {
            let read = Result { try attached.read(offset: 0, count: 4 * 65536) }
            first.withLock { $0 = read }
        }.start()
        try await eventually("the first reads", seconds: 10) { first.withLock { $0 } != nil }
        #expect(try first.withLock { $0 }!.get() == Array(f.primary.bytes[0..<4 * 65536]))
        // The fifth cannot be installed: retried, then the reader is told.
        let fifth = Locked<Result<[UInt8], any Error>?>(nil)
        Thread {
            let read = Result { try attached.read(offset: 9 * 65536, count: 8) }
            fifth.withLock { $0 = read }
        }.start()
        try await eventually("the install retries", seconds: 10) { f.mirror.progress.installsPending >= 1 }
        #expect(fifth.withLock { $0 } == nil, "the reader waits while the install is retried")
        try await eventually("the reader's answer", seconds: 15) { fifth.withLock { $0 } != nil }
        guard case .failure(let error)? = fifth.withLock({ $0 }) else {
            Issue.record("the read returned bytes that were never installed"); return
        }
        #expect("\(error)".contains("could not be installed"), "\(error)")
        #expect(f.mirror.progress.installError != nil)
        // Every allocated byte of the file is the primary's: no zero page
        // planted. (SEEK_DATA and SEEK_HOLE are hidden behind _GNU_SOURCE.)
        let SEEK_DATA: Int32 = 3, SEEK_HOLE: Int32 = 4
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        var offset = lseek(fd, 0, SEEK_DATA)
        var allocated = 0
        while offset >= 0 && Int(offset) < 1 << 20 {
            let end = Int(lseek(fd, offset, SEEK_HOLE))
            var bytes = [UInt8](repeating: 0, count: end - Int(offset))
            #expect(pread(fd, &bytes, bytes.count, offset) == bytes.count)
            #expect(bytes == Array(f.primary.bytes[Int(offset)..<end]), "bytes \(offset)..<\(end)")
            allocated += bytes.count
            offset = lseek(fd, off_t(end), SEEK_DATA)
        }
        #expect(allocated == 4 * 65536)
        attached.detach()
        await f.close()
    }

    @Test("memreplica cat, a separate process, reads a lazy replica exactly (SHA-256), faulting chunks in")
    func catLazyReplica() async throws {
        let size = 4 << 20
        try await LazyFixture.with(size: size, seed: 21) { f in
            let exe = try builtExecutable()
            let out = f.root + "/out.bin"
            let rc = try await runShell("'\(exe)' cat lazy --control '\(f.socket)' > '\(out)' 2>'\(f.root)/err'")
            let err = (try? String(contentsOfFile: f.root + "/err", encoding: .utf8)) ?? ""
            #expect(rc == 0, "cat failed: \(err)")
            #expect(try fileSHA(out) == sha256Hex(Array(f.primary.bytes)))
            let p = f.mirror.progress
            #expect(p.faults >= p.chunkCount, "the chunks came in through the cat process's faults")
            #expect(p.faultsServed == p.faults)

            // A slice, and the usage and lookup errors with their exit codes.
            let slice = f.root + "/slice.bin"
            #expect(try await runShell("'\(exe)' cat lazy --control '\(f.socket)' --offset 70000 --length 5000 > '\(slice)'") == 0)
            #expect(try Data(contentsOf: URL(fileURLWithPath: slice)) == Data(f.primary.bytes[70000..<75000]))
            #expect(try await runShell("'\(exe)' cat lazy --control '\(f.socket)' --offset \(size + 1) >/dev/null 2>&1") == 2)
            #expect(try await runShell("'\(exe)' cat lazy --control '\(f.socket)' --offset 10 --length \(size) >/dev/null 2>&1") == 2)
            #expect(try await runShell("'\(exe)' cat lazy --control '\(f.socket)' --length -1 >/dev/null 2>&1") == 2)
            let unknown = try await runShell("'\(exe)' cat nosuch --control '\(f.socket)' >/dev/null 2>'\(f.root)/err2'")
            #expect(unknown == 1)
            let line = (try? String(contentsOfFile: f.root + "/err2", encoding: .utf8)) ?? ""
            #expect(line.contains("no region named 'nosuch'") && line.split(separator: "\n").count == 1, "\(line)")
            // Sessions ended with the processes.
            try await eventually("detach", seconds: 5) { f.mirror.attachedClients == 0 }
        }
    }

    @Test("an attached reader's blocked thread is served; detach and bad attach requests get clear errors, the peer keeps serving")
    func badRequests() async throws {
        try await LazyFixture.with(size: 1 << 20, seed: 5) { f in
            func ask(_ line: String, passing fd: Int32 = -1, split: Bool = false) throws -> String {
                let s = try UnixSocket.connect(to: f.socket)
                defer { s.close() }
                let bytes = Array((line + "\n").utf8)
                if split {
                    try s.send(Array(bytes[..<10]), passing: fd, deadline: .now + .seconds(2))
                    try s.send(Array(bytes[10...]), passing: fd, deadline: .now + .seconds(2))
                } else {
                    try s.send(bytes, passing: fd, deadline: .now + .seconds(2))
                }
                return String(decoding: try s.readLine(limit: 1 << 16, deadline: .now + .seconds(5)), as: UTF8.self)
            }
            func freshUffd() throws -> Int32 {
                let u = qs_uffd_open(0)
                try #require(u >= 0)
                return u
            }
            #expect(try ask("not json").contains("malformed control message"))
            #expect(try ask(#"{"command":"attach"}"#).contains("malformed attach request"))
            #expect(try ask(#"{"command":"attach","region":"nope"}"#).contains("no region named 'nope'"))
            #expect(try ask(#"{"command":"attach","region":"lazy","role":"primary"}"#).contains("not a primary"))
            let u1 = try freshUffd()
            #expect(try ask(#"{"command":"attach","region":"lazy"}"#, passing: u1).contains("needs base and length"))
            var pipeFDs: [Int32] = [0, 0]
            try #require(pipe(&pipeFDs) == 0)
            #expect(try ask(#"{"command":"attach","region":"lazy","base":4096,"length":1048576}"#, passing: pipeFDs[0])
                        .contains("not a userfaultfd"))
            let u2 = try freshUffd()
            #expect(try ask(#"{"command":"attach","region":"lazy","base":4096,"length":8192}"#, passing: u2)
                        .contains("whole region"))
            let u3 = try freshUffd()
            #expect(try ask(#"{"command":"attach","region":"lazy","base":4096,"length":1048576}"#, passing: u3, split: true)
                        .contains("more descriptors"))
            #expect(try ask(String(repeating: "x", count: ControlServer.requestLimit + 10)).contains("limit"))
            for fd in [u1, u2, u3, pipeFDs[0], pipeFDs[1]] { close(fd) }
            // The lookup answers geometry and a path this process can map.
            let answer = try AttachedRegion.lookup(controlPath: f.socket, region: "lazy")
            #expect(answer.lazy && answer.size == 1 << 20 && answer.chunkSize == 65536 && !answer.attached)
            #expect(f.mirror.attachedClients == 0)

            // A real attachment in this process: a blocked reader is served.
            let attached = try AttachedRegion(controlPath: f.socket, region: "lazy")
            #expect(attached.answer.attached)
            try await eventually("attach", seconds: 5) { f.mirror.attachedClients == 1 }
            let base = UInt(bitPattern: attached.bytes.baseAddress!)
            let got = Locked<UInt64?>(nil)
            Thread { got.withLock { $0 = UnsafeRawPointer(bitPattern: base)!.load(fromByteOffset: 9 * 65536 + 8, as: UInt64.self) } }.start()
            try await eventually("the attached read", seconds: 10) { got.withLock { $0 } != nil }
            #expect(got.withLock { $0 } == f.primary.bytes.load(fromByteOffset: 9 * 65536 + 8, as: UInt64.self))
            attached.detach()
            try await eventually("detach", seconds: 5) { f.mirror.attachedClients == 0 }
            // Still serving.
            #expect(try ask(#"{"command":"status"}"#).contains("status-marker"))
        }
    }
}
