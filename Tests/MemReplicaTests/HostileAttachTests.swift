@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import LinuxShim
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif

private func quiet() -> Logger {
    var l = Logger(label: "hostile-attach")
    l.logLevel = .critical
    return l
}

/// Entries in this process's descriptor table now.
private func openDescriptors() throws -> Int {
    try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
}

/// Two peers in this process: "primary" exports `p` and `src` (memfds);
/// "replica" mirrors `src` lazily into a /dev/shm file. Each answers on its
/// own control socket, wired as `memreplica peer` wires it.
private struct TwoPeers {
    static let size = 1 << 20
    let root: String
    let pki: TestPKI
    let primary: PeerService
    let replica: PeerService
    let runner: MirrorRunner
    let controls: [ControlServer]
    let serving: [Task<Void, Never>]
    let exported: Region
    let source: Region
    var primarySocket: String { root + "/p.sock" }
    var replicaSocket: String { root + "/r.sock" }

    static func start() async throws -> TwoPeers {
        let root = NSTemporaryDirectory() + "mr-hostile-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let pki = try TestPKI(peers: ("primary", "replica"))
        let exported = try Region(name: "p", backing: .memory, size: size, chunkSize: 65536)
        let source = try Region(name: "src", backing: .memory, size: size, chunkSize: 65536)
        fillPattern(exported.bytes, seed: 1)
        fillPattern(source.bytes, seed: 2)
        let primaryEndpoint = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                               configuration: quicConfig(server: true), logger: quiet())
        let replicaEndpoint = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.client.tls,
                                               configuration: quicConfig(server: true), logger: quiet())
        let primary = PeerService(endpoint: primaryEndpoint,
                                  exports: RegionExports([.init(region: exported), .init(region: source)], logger: quiet()),
                                  logger: quiet())
        let spec = try MirrorSpec(parsing: "src@127.0.0.1:\(primaryEndpoint.localAddress.port)=/dev/shm/\(root.split(separator: "/").last!)-src",
                                  lazy: true)
        let runner = MirrorRunner(spec: spec, endpoint: replicaEndpoint, logger: quiet())
        let replica = PeerService(endpoint: replicaEndpoint, mirrors: [runner], logger: quiet())
        var controls: [ControlServer] = []
        for (service, path) in [(primary, root + "/p.sock"), (replica, root + "/r.sock")] {
            controls.append(try ControlServer(path: path, logger: quiet(), attachHandler: { service.attach($0, from: $1) }) {
                await service.handle($0)
            })
        }
        let serving = [Task { await primary.run() }, Task { await replica.run() }]
        let peers = TwoPeers(root: root, pki: pki, primary: primary, replica: replica, runner: runner, controls: controls,
                             serving: serving, exported: exported, source: source)
        // Steady before anything is counted: the lazy replica holds every chunk.
        try await withTimeout(30, "the lazy replica filling in") {
            while true {
                if case .lazy(let m)? = runner.mirror, m.progress.subscribed, m.progress.complete { return }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        return peers
    }

    func stop() async {
        for control in controls { await control.stop() }
        await primary.endpoint.close()
        await replica.endpoint.close()
        for task in serving { await task.value }
        unlink(runner.spec.path)
        pki.remove()
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// One hostile request: its line, the descriptors sent with it, and how.
private struct BadAttach: Sendable {
    enum Passing: Sendable {
        case none
        /// One descriptor with the line.
        case one(Int32)
        /// Two descriptors in one message.
        case two(Int32, Int32)
        /// The line in two messages, a descriptor with each.
        case split(Int32)
    }
    let kind: String
    let line: [UInt8]
    let passing: Passing

    /// Sends it and returns the peer's answer line.
    func send(to path: String) throws -> [UInt8] {
        let socket = try UnixSocket.connect(to: path)
        defer { socket.close() }
        let deadline = ContinuousClock.now + .seconds(5)
        switch passing {
        case .none:
            try socket.send(line, deadline: deadline)
        case .one(let fd):
            try socket.send(line, passing: fd, deadline: deadline)
        case .two(let a, let b):
            try sendWithTwoDescriptors(socket.fd.rawValue, line, a, b)
        case .split(let fd):
            let half = line.count / 2
            try socket.send(Array(line[..<half]), passing: fd, deadline: deadline)
            try socket.send(Array(line[half...]), passing: fd, deadline: deadline)
        }
        return try socket.readLine(limit: 1 << 16, deadline: deadline)
    }

    /// SCM_RIGHTS with two descriptors, laid out by hand (Swift cannot use
    /// the CMSG macros): a 16-byte cmsghdr, then the two ints.
    private func sendWithTwoDescriptors(_ socket: Int32, _ bytes: [UInt8], _ a: Int32, _ b: Int32) throws {
        var control = [UInt64](repeating: 0, count: 3)  // CMSG_SPACE(8) = 24, 8-aligned
        control.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt64(24), toByteOffset: 0, as: UInt64.self)  // cmsg_len = CMSG_LEN(8)
            raw.storeBytes(of: Int32(SOL_SOCKET), toByteOffset: 8, as: Int32.self)
            raw.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: 12, as: Int32.self)
            raw.storeBytes(of: a, toByteOffset: 16, as: Int32.self)
            raw.storeBytes(of: b, toByteOffset: 20, as: Int32.self)
        }
        var payload = bytes
        let sent = payload.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { cmsg in
                var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var message = msghdr()
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    message.msg_control = cmsg.baseAddress
                    message.msg_controllen = cmsg.count
                    return sendmsg(socket, &message, Int32(MSG_NOSIGNAL))
                }
            }
        }
        guard sent == bytes.count else { throw ControlError.system(call: "sendmsg", path: "", errno: .init(rawValue: errno)) }
    }
}

/// Every kind of bad attach for a region of `size` bytes named `region`:
/// `uffd` is a real userfaultfd, `notUffd` any other descriptor.
private func badAttaches(region: String, size: Int, uffd: Int32, notUffd: Int32) -> [BadAttach] {
    let valid: UInt64 = 0x7f00_0000_0000
    func line(_ fields: String) -> [UInt8] {
        Array("{\"command\":\"attach\",\"region\":\"\(region)\"\(fields)}\n".utf8)
    }
    func numbers(_ base: String, _ length: String) -> [UInt8] { line(",\"base\":\(base),\"length\":\(length)") }
    let top: UInt64 = 0xFFFF_FFFF_FFFF_F000
    // x86-64's user address space ends here (`AttachMapping.userAddressSpaceEnd`).
    let userEnd: UInt64 = 0x0000_8000_0000_0000
    return [
        BadAttach(kind: "huge base", line: numbers("\(UInt64(1) << 62)", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "base at the top", line: numbers("\(top)", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "base UInt64.max", line: numbers("\(UInt64.max)", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "ends past the user address space",
                  line: numbers("\(userEnd - 4096)", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "starts at the user address space's end",
                  line: numbers("\(userEnd)", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "misaligned base", line: numbers("\(valid + 1)", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "zero base", line: numbers("0", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "length one too many", line: numbers("\(valid)", "\(size + 1)"), passing: .one(uffd)),
        BadAttach(kind: "length a page short", line: numbers("\(valid)", "\(size - 4096)"), passing: .one(uffd)),
        BadAttach(kind: "zero length", line: numbers("\(valid)", "0"), passing: .one(uffd)),
        BadAttach(kind: "twice the length", line: numbers("\(valid)", "\(2 * size)"), passing: .one(uffd)),
        BadAttach(kind: "negative length", line: numbers("\(valid)", "-1"), passing: .one(uffd)),
        BadAttach(kind: "most negative length", line: numbers("\(valid)", "\(Int.min)"), passing: .one(uffd)),
        BadAttach(kind: "not a userfaultfd", line: numbers("\(valid)", "\(size)"), passing: .one(notUffd)),
        BadAttach(kind: "two descriptors in one message", line: numbers("\(valid)", "\(size)"), passing: .two(uffd, uffd)),
        BadAttach(kind: "two descriptors in two messages", line: numbers("\(valid)", "\(size)"), passing: .split(uffd)),
        BadAttach(kind: "no length", line: line(",\"base\":\(valid)"), passing: .one(uffd)),
        BadAttach(kind: "no base", line: line(",\"length\":\(size)"), passing: .one(uffd)),
        BadAttach(kind: "wrong role", line: line(",\"role\":\"writer\",\"base\":\(valid),\"length\":\(size)"), passing: .one(uffd)),
        BadAttach(kind: "base as a string", line: numbers("\"0x1000\"", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "negative base", line: numbers("-4096", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "base past 2^64", line: numbers("18446744073709551616", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "base 1e300", line: numbers("1e300", "\(size)"), passing: .one(uffd)),
        BadAttach(kind: "length past Int.max", line: numbers("\(valid)", "99999999999999999999"), passing: .one(uffd)),
        BadAttach(kind: "fractional length", line: numbers("\(valid)", "\(size).5"), passing: .one(uffd)),
        BadAttach(kind: "truncated JSON", line: Array("{\"command\":\"attach\",\"region\":\"\(region)\",\"base\":\n".utf8),
                  passing: .one(uffd)),
        BadAttach(kind: "not JSON", line: [0x00, 0xff, 0x7b, 0x0a], passing: .one(uffd)),
        BadAttach(kind: "unknown region", line: Array("{\"command\":\"attach\",\"region\":\"nope\",\"base\":\(valid),\"length\":\(size)}\n".utf8),
                  passing: .one(uffd)),
        BadAttach(kind: "huge base, no descriptor", line: numbers("\(top)", "\(size)"), passing: .none),
    ]
}

@Suite("Hostile attach requests", .serialized)
struct HostileAttachTests {
    /// Per region: this many refused attaches, the kinds in turn.
    static let attachesPerRegion = 10_000

    @Test("10,000 bad attaches of every kind at a primary and at a lazy replica: each refused, both peers answer status, and the descriptor count is unchanged")
    func refusedWithoutTrapOrLeak() async throws {
        let peers = try await TwoPeers.start()
        let uffd = qs_uffd_open(0)
        try #require(uffd >= 0)
        var pipeFDs: [Int32] = [-1, -1]
        try #require(pipe(&pipeFDs) == 0)
        let targets = [(peers.primarySocket, "p"), (peers.replicaSocket, "src")]
        let before = try openDescriptors()

        // Off the concurrency pool: the peers' tasks share it with this test.
        let failures = try await withCheckedThrowingContinuation { (c: CheckedContinuation<[String], any Error>) in
            let uffdCopy = uffd, notUffd = pipeFDs[0]
            Thread {
                c.resume(with: Result {
                    var failures: [String] = []
                    for (socket, region) in targets {
                        let kinds = badAttaches(region: region, size: TwoPeers.size, uffd: uffdCopy, notUffd: notUffd)
                        for i in 0..<Self.attachesPerRegion {
                            let attach = kinds[i % kinds.count]
                            let reply = try attach.send(to: socket)
                            guard case .error(let message)? = try? JSONDecoder().decode(ControlResponse.self, from: Data(reply)),
                                  !message.isEmpty else {
                                if failures.count < 20 {
                                    failures.append("\(region) / \(attach.kind): \(String(decoding: reply, as: UTF8.self))")
                                }
                                continue
                            }
                        }
                    }
                    return failures
                })
            }.start()
        }
        #expect(failures.isEmpty, "not refused: \(failures)")

        // The peer closes each connection just after answering: wait for the
        // last closes rather than sample once.
        let deadline = ContinuousClock.now + .seconds(10)
        var after = try openDescriptors()
        while after != before, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            after = try openDescriptors()
        }
        #expect(after == before, "descriptors before the attaches: \(before), after: \(after)")
        close(uffd)
        close(pipeFDs[0])
        close(pipeFDs[1])

        // Both peers alive, answering, and still serving real attachments.
        let primaryStatus = try await ControlClient(path: peers.primarySocket).status()
        #expect(primaryStatus.regions.map(\.name).sorted() == ["p", "src"])
        #expect(primaryStatus.regions.allSatisfy { ($0.attached ?? []).isEmpty })
        let replicaStatus = try await ControlClient(path: peers.replicaSocket).status()
        #expect(replicaStatus.regions.map(\.name) == ["src"])
        #expect(RegionChangeFeed.attachedWriters(of: peers.exported) == 0)
        let reader = try AttachedRegion(controlPath: peers.replicaSocket, region: "src")
        #expect(reader.answer.attached)
        #expect(sha256Hex(Array(reader.bytes)) == sha256Hex(Array(peers.source.bytes)))
        reader.detach()
        await peers.stop()
    }

    /// Found by the control fuzz target: a region name with a line break
    /// made a two-line refusal (and a two-line log entry).
    @Test("a refusal quoting the client's region or role stays one line, control characters escaped")
    func refusalsAreOneLine() async throws {
        #expect(PeerService.oneLine("no region named 'op\n' on this peer") == "no region named 'op\\n' on this peer")
        #expect(PeerService.oneLine("a\u{1B}[2Jb\u{2028}c\td") == "a\\u{1B}[2Jb\\u{2028}c\\td")
        let pki = try TestPKI()
        defer { pki.remove() }
        let endpoint = try QUICEndpoint(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.server.tls,
                                        configuration: quicConfig(server: true), logger: quiet())
        let service = PeerService(endpoint: endpoint, logger: quiet())
        for line in [#"{"command": "attach", "region": "op\nINFO forged log line"}"#,
                     #"{"command": "attach", "region": "p", "role": "primary\r\nrole"}"#] {
            let request = try JSONDecoder().decode(AttachRequest.self, from: Data(line.utf8))
            guard case .refused(let reason) = service.attach(request, from: AttachingProcess(pid: getpid(), userfaultfd: nil)) else {
                Issue.record("accepted: \(line)")
                continue
            }
            #expect(!reason.contains("\n") && !reason.contains("\r"), "\(reason)")
            #expect(reason.contains("\\n"), "\(reason)")
        }
        await endpoint.close()
    }

    @Test("AttachMapping checks every number with overflow-checked arithmetic")
    func mappingRules() throws {
        let size = 3 * 4096 + 100
        let whole = 4 * 4096
        let ok = try AttachMapping(base: 0x10000, length: size, regionSize: size, pageSize: 4096)
        #expect(ok.base == 0x10000 && ok.length == whole && ok.end == 0x10000 + UInt64(whole))
        #expect(try AttachMapping(base: 0x10000, length: whole, regionSize: size, pageSize: 4096) == ok)
        let end = AttachMapping.userAddressSpaceEnd
        #expect(try AttachMapping(base: end - UInt64(whole), length: whole, regionSize: size, pageSize: 4096).end == end)
        let refusals: [(UInt64?, Int?, AttachMapping.Invalid)] = [
            (nil, size, .missing), (0x10000, nil, .missing),
            (0, size, .zeroBase), (0x10001, size, .misaligned(base: 0x10001, pageSize: 4096)),
            (end - 4096, size, .outsideUserSpace(base: end - 4096, length: whole)),
            (end, size, .outsideUserSpace(base: end, length: whole)),
            (0xFFFF_FFFF_FFFF_F000, size, .outsideUserSpace(base: 0xFFFF_FFFF_FFFF_F000, length: whole)),
            (0x10000, size - 1, .wrongLength(size - 1, regionSize: size)),
            (0x10000, -1, .wrongLength(-1, regionSize: size)),
            (0x10000, Int.min, .wrongLength(Int.min, regionSize: size)),
            (0x10000, Int.max, .wrongLength(Int.max, regionSize: size)),
        ]
        for (base, length, expected) in refusals {
            #expect(throws: expected) { try AttachMapping(base: base, length: length, regionSize: size, pageSize: 4096) }
        }
    }
}
