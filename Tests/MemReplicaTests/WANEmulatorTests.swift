@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTCP
@testable import MemReplicaTransportCore
@testable import MemReplicaWAN
import LinuxShim
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif
// The socket constants (SOCK_STREAM ...) can come out of the module cache
// as QuicShim's, which includes <sys/socket.h>; importing it keeps them
// visible here whichever module the compiler met them in first.

/// Blocking TCP and UDP sockets made inside an emulator's namespaces.
private enum WANSockets {
    static func tcpListener(in namespace: NetworkNamespace, address: String) throws -> (fd: Int32, port: UInt16) {
        let fd = try namespace.perform { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        try #require(fd >= 0)
        let local = try PeerAddress(host: address, port: 0)
        try #require(local.storage.withSockaddr { bind(fd, $0, $1) } == 0, "bind: errno \(errno)")
        try #require(listen(fd, 64) == 0)
        return (fd, PeerAddress(storage: TCPSocket.localStorage(fd)).port)
    }

    /// A blocking connect; returns the socket once the handshake's SYN-ACK arrived.
    static func tcpConnect(in namespace: NetworkNamespace, to address: String, port: UInt16) throws -> Int32 {
        let fd = try namespace.perform { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        try #require(fd >= 0)
        let remote = try PeerAddress(host: address, port: port)
        try #require(remote.storage.withSockaddr { connect(fd, $0, $1) } == 0, "connect: errno \(errno)")
        return fd
    }

    static func congestionControl(of fd: Int32) -> String {
        var name = [CChar](repeating: 0, count: 32)
        var length = socklen_t(name.count)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_CONGESTION, &name, &length) == 0 else { return "?" }
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func totalRetransmissions(of fd: Int32) -> UInt32 {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return 0 }
        return info.tcpi_total_retrans
    }
}

/// A train of numbered UDP datagrams from side A to side B, `gap` apart
/// (in bursts of `burst`); returns each arrival's sequence number and time.
private func udpTrain(_ emulator: WANEmulator, count: Int, payload: Int = 64, gap: Duration, burst: Int = 1) throws
    -> [(sequence: Int, at: UInt64)] {
    let sink = try WANCalibration.udpSocket(in: emulator.sideB, address: emulator.addressB, receiveBuffer: 8 << 20)
    defer { close(sink.fd) }
    let source = try WANCalibration.udpSocket(in: emulator.sideA, address: emulator.addressA)
    defer { close(source.fd) }
    let remote = try PeerAddress(host: emulator.addressB, port: sink.port)
    try #require(remote.storage.withSockaddr { connect(source.fd, $0, $1) } == 0)
    var timeout = timeval(tv_sec: 0, tv_usec: 300_000)
    _ = setsockopt(sink.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

    let arrivals = Locked<[(sequence: Int, at: UInt64)]>([])
    let done = DispatchSemaphore(value: 0)
    let sinkFD = sink.fd
    Thread.detachNewThread {
        var buffer = [UInt8](repeating: 0, count: 2048)
        var local: [(sequence: Int, at: UInt64)] = []
        // Ends after 300 ms of silence (the train plus its longest delay has passed).
        while recv(sinkFD, &buffer, buffer.count, 0) >= 8 {
            local.append((Int(truncatingIfNeeded: buffer.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }),
                           monotonicNanoseconds()))
        }
        arrivals.withLock { $0 = local }
        done.signal()
    }
    var packet = [UInt8](repeating: 0xab, count: payload)
    let start = monotonicNanoseconds()
    for sequence in 0..<count {
        if sequence % burst == 0 { WANCalibration.sleepUntil(start + UInt64(sequence / burst) * gap.saturatingNanoseconds) }
        packet.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(sequence), as: UInt64.self) }
        _ = send(source.fd, packet, packet.count, 0)
    }
    done.wait()
    return arrivals.withLock { $0 }
}

private func inversions(_ sequences: [Int]) -> Int {
    var highest = -1
    var count = 0
    for s in sequences {
        if s < highest { count += 1 }
        highest = max(highest, s)
    }
    return count
}

/// Serves every stream of the first connection `server` accepts from
/// `exports`, as a primary whose mirror offered `offered`.
private func serveFirstConnection(_ exports: RegionExports, on server: any Transport,
                                  offered: WireCapabilities = []) -> Task<Void, Never> {
    Task {
        guard let connection = await server.accept() else { return }
        await withDiscardingTaskGroup { group in
            while let stream = try? await connection.acceptStream() {
                group.addTask { await exports.serve(stream, peer: connection.peerIdentity, offered: offered) }
            }
        }
    }
}

@Suite("WAN emulator", .serialized)
struct WANEmulatorTests {
    @Test("a one-way delay of D gives a round trip within 5 % of 2D, for UDP and for TCP; the namespace's TCP controller is the one asked for")
    func delay() throws {
        let emulator = try WANEmulator(aToB: .init(delay: .milliseconds(20)), bToA: .init(delay: .milliseconds(20)),
                                       tcpCongestionControl: "reno")
        defer { emulator.shutdown() }
        let report = try WANCalibration.run(emulator, probes: 200, interval: .milliseconds(1), measureCapacity: false)
        #expect(report.rttAgrees, "\(report)")
        #expect(abs(report.measuredRTT.milliseconds - 40) <= 2, "\(report)")
        #expect(report.statistics.aToB.packetsPassed >= 200)

        // TCP: connect() returns when the SYN-ACK is back, one round trip after the SYN.
        let listener = try WANSockets.tcpListener(in: emulator.sideA, address: emulator.addressA)
        defer { close(listener.fd) }
        var handshakes: [Double] = []
        for _ in 0..<5 {
            let start = ContinuousClock.now
            let fd = try WANSockets.tcpConnect(in: emulator.sideB, to: emulator.addressA, port: listener.port)
            handshakes.append((ContinuousClock.now - start).milliseconds)
            #expect(WANSockets.congestionControl(of: fd) == "reno")
            close(fd)
        }
        let median = handshakes.sorted()[2]
        #expect(abs(median - 40) <= 2, "TCP handshakes took \(handshakes) ms")
    }

    @Test("a loss rate of p loses p of the packets each way, within 5 % or 3 standard deviations over 20 000 probes")
    func loss() throws {
        let emulator = try WANEmulator(aToB: .init(delay: .milliseconds(1), lossRate: 0.1),
                                       bToA: .init(delay: .milliseconds(1), lossRate: 0.1), randomSeed: 7)
        defer { emulator.shutdown() }
        let report = try WANCalibration.run(emulator, probes: 20_000, interval: .microseconds(50), measureCapacity: false)
        #expect(report.lossAgrees, "\(report)")
        #expect(report.measuredLossAToB > 0.08 && report.measuredLossAToB < 0.12, "\(report)")
        let ab = report.statistics.aToB
        // What the forwarder says it dropped is what the receiver missed.
        #expect(ab.kernelTxDropped == 0)
        #expect(ab.droppedByLoss == UInt64((report.measuredLossAToB * 20_000).rounded()), "\(report)")
        #expect(ab.droppedByQueue == 0 && ab.droppedByCapacity == 0)
    }

    @Test("TCP is affected too: a lossy direction makes the sender retransmit, and the data still arrives whole")
    func tcpLoss() throws {
        let emulator = try WANEmulator(aToB: .init(delay: .milliseconds(1)),
                                       bToA: .init(delay: .milliseconds(1), lossRate: 0.03), randomSeed: 11)
        defer { emulator.shutdown() }
        let listener = try WANSockets.tcpListener(in: emulator.sideA, address: emulator.addressA)
        defer { close(listener.fd) }
        let total = 2 << 20
        let received = Locked(0)
        let done = DispatchSemaphore(value: 0)
        let listenerFD = listener.fd
        Thread.detachNewThread {
            let fd = accept(listenerFD, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 65536)
            var count = 0
            while fd >= 0 {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                count += n
            }
            if fd >= 0 { close(fd) }
            received.withLock { $0 = count }
            done.signal()
        }
        let client = try WANSockets.tcpConnect(in: emulator.sideB, to: emulator.addressA, port: listener.port)
        let data = [UInt8](repeating: 0x42, count: total)
        var sent = 0
        while sent < total {
            let n = data.withUnsafeBytes { send(client, $0.baseAddress! + sent, total - sent, 0) }
            try #require(n > 0, "send: errno \(errno)")
            sent += n
        }
        shutdown(client, Int32(SHUT_WR))
        done.wait()
        let retransmissions = WANSockets.totalRetransmissions(of: client)
        close(client)
        #expect(received.withLock { $0 } == total)
        #expect(retransmissions > 0)
        let stats = emulator.statistics()
        #expect(stats.bToA.droppedByLoss > 0)
        #expect(stats.aToB.droppedByLoss == 0)
        #expect(UInt64(retransmissions) >= stats.bToA.droppedByLoss / 2, "\(retransmissions) retransmissions for \(stats)")
    }

    @Test("a rate limit paces packets at the rate, and a full queue tail-drops")
    func rateLimit() throws {
        let rate: UInt64 = 10_000_000
        let emulator = try WANEmulator(aToB: .init(rateBitsPerSecond: rate, queueLimitBytes: 30_000), bToA: .init())
        defer { emulator.shutdown() }
        // 400 datagrams of 1228 IP bytes offered at 20 Mbit/s: twice the rate.
        let payload = 1200
        let arrivals = try udpTrain(emulator, count: 400, payload: payload, gap: .microseconds(4912), burst: 10)
        try #require(arrivals.count > 10)
        let bits = Double((arrivals.count - 1) * (payload + 28) * 8)
        let seconds = Double(arrivals.last!.at - arrivals.first!.at) / 1e9
        let measured = bits / seconds
        #expect(abs(measured - Double(rate)) <= 0.05 * Double(rate), "measured \(measured / 1e6) Mbit/s")
        let stats = emulator.statistics().aToB
        #expect(stats.droppedByQueue > 100, "\(stats)")
        #expect(stats.packetsPassed + stats.droppedByQueue == 400)
    }

    @Test("jitter reorders packets by default, and keeps their order when asked to (changed live)")
    func jitterOrder() throws {
        let jittery = WANLinkProfile(delay: .milliseconds(5), jitter: .milliseconds(4))
        let emulator = try WANEmulator(aToB: jittery, bToA: jittery)
        defer { emulator.shutdown() }
        let reordered = try udpTrain(emulator, count: 1000, gap: .microseconds(100))
        #expect(reordered.count == 1000)
        #expect(inversions(reordered.map(\.sequence)) > 50)

        var inOrder = jittery
        inOrder.reorder = false
        emulator.setProfiles(aToB: inOrder, bToA: inOrder)
        #expect(emulator.profiles.aToB == inOrder)
        let ordered = try udpTrain(emulator, count: 1000, gap: .microseconds(100))
        #expect(ordered.count == 1000)
        #expect(inversions(ordered.map(\.sequence)) == 0)
    }

    @Test("shutdown (or the last reference going away) deletes both namespaces; a second shutdown does nothing")
    func teardown() throws {
        let emulator = try WANEmulator(aToB: .init(), bToA: .init())
        let sides = [emulator.sideA, emulator.sideB]
        #expect(sides.allSatisfy { $0.exists })
        #expect(emulator.addressA.hasPrefix("198.18.") && emulator.addressB.hasPrefix("198.18."))
        emulator.shutdown()
        #expect(!sides.contains { $0.exists })
        emulator.shutdown()

        var dropped: WANEmulator? = try WANEmulator(aToB: .init(), bToA: .init())
        let droppedSides = [dropped!.sideA, dropped!.sideB]
        #expect(droppedSides.allSatisfy { $0.exists })
        dropped = nil
        #expect(!droppedSides.contains { $0.exists })
    }

    @Test("namespaces left by a killed process are removed by the next emulator")
    func crashCleanup() async throws {
        let child = try ChildProcess(builtExecutable(), ["wan-emulator", "--rtt", "10ms", "--loss", "1", "--hold"])
        defer { child.terminate(grace: .milliseconds(100)) }
        // A process's first emulator is number 1.
        let left = ["a", "b"].map { NetworkNamespace(name: "mrwan-\(child.pid)-1-\($0)") }
        let deadline = ContinuousClock.now + .seconds(20)
        while !left.allSatisfy({ $0.exists }) {
            try #require(child.isRunning, "the wan-emulator process exited")
            try #require(ContinuousClock.now < deadline, "the child never created its namespaces")
            try await Task.sleep(for: .milliseconds(20))
        }
        kill(child.pid, SIGKILL)
        #expect(child.wait() == 128 + SIGKILL)
        #expect(left.allSatisfy { $0.exists }, "a killed process cannot clean up; the test needs its leftovers")

        let emulator = try WANEmulator(aToB: .init(), bToA: .init())
        #expect(!left.contains { $0.exists })
        #expect(emulator.sideA.exists && emulator.sideB.exists)
        emulator.shutdown()
        #expect(try WANEmulator.removeStale().isEmpty)
    }

    @Test("the hidden wan-emulator command tears its namespaces down on SIGTERM")
    func commandTeardown() async throws {
        let child = try ChildProcess(builtExecutable(), ["wan-emulator", "--rtt", "2ms", "--hold"])
        defer { child.terminate(grace: .milliseconds(100)) }
        let sides = ["a", "b"].map { NetworkNamespace(name: "mrwan-\(child.pid)-1-\($0)") }
        let deadline = ContinuousClock.now + .seconds(20)
        while !sides.allSatisfy({ $0.exists }) {
            try #require(child.isRunning, "the wan-emulator process exited")
            try #require(ContinuousClock.now < deadline, "the child never created its namespaces")
            try await Task.sleep(for: .milliseconds(20))
        }
        // The signal monitor is installed before the emulator, so a signal
        // that lands mid set-up is still answered by a teardown.
        kill(child.pid, SIGTERM)
        #expect(child.wait() == 0)
        #expect(!sides.contains { $0.exists })
    }

    @Test("transport sockets are made inside the configured namespace, and TCP ones carry the configured controller")
    func transportSockets() throws {
        let emulator = try WANEmulator(aToB: .init(), bToA: .init(), tcpCongestionControl: "reno")
        defer { emulator.shutdown() }
        var quic = QUICConfiguration()
        quic.congestionControl = .bbr
        quic.networkNamespace = emulator.sideA
        let tcp = TCPConfiguration(matching: quic)
        #expect(tcp.congestionControl == "bbr")
        #expect(tcp.networkNamespace == emulator.sideA)

        // 198.18.0.1 exists only in side A: binding it proves where the socket is.
        let (listener, bound) = try TCPSocket.listen(on: PeerAddress(host: emulator.addressA, port: 0), bufferSize: nil,
                                                     userTimeout: .seconds(5), congestionControl: tcp.congestionControl,
                                                     namespace: tcp.networkNamespace)
        defer { close(listener) }
        #expect(WANSockets.congestionControl(of: listener) == "bbr")
        let client = try TCPSocket.startConnect(to: PeerAddress(host: emulator.addressA, port: bound.port).storage,
                                                source: PeerAddress(host: emulator.addressB, port: 0), bufferSize: nil,
                                                userTimeout: .seconds(5), congestionControl: "bbr",
                                                namespace: emulator.sideB)
        defer { close(client) }
        #expect(WANSockets.congestionControl(of: client) == "bbr")
        var accepted: (fd: Int32, remote: SocketAddressStorage)?
        let deadline = ContinuousClock.now + .seconds(5)
        while accepted == nil && ContinuousClock.now < deadline {
            accepted = TCPSocket.acceptOne(listener, userTimeout: .seconds(5), congestionControl: "bbr")
            usleep(1000)
        }
        let peer = try #require(accepted, "the connection from side B never arrived")
        defer { close(peer.fd) }
        #expect(PeerAddress(storage: peer.remote).host == emulator.addressB)
        #expect(WANSockets.congestionControl(of: peer.fd) == "bbr")
        // Without an explicit controller a socket takes the namespace's default.
        let plain = try WANSockets.tcpConnect(in: emulator.sideB, to: emulator.addressA, port: bound.port)
        defer { close(plain) }
        #expect(WANSockets.congestionControl(of: plain) == "reno")

        let udp = try UDPSocket(bindTo: PeerAddress(host: emulator.addressB, port: 0), bufferSize: 1 << 20,
                                namespace: emulator.sideB)
        defer { udp.close() }
        #expect(udp.localAddress.host == emulator.addressB)
        // Back in the host's namespace, where 198.18.0.2 does not exist.
        #expect(throws: TransportError.self) {
            try UDPSocket(bindTo: PeerAddress(host: emulator.addressB, port: 0), bufferSize: 1 << 20)
        }
        // A failure inside keeps its errno across the switch back.
        let bad = try emulator.sideA.perform { socket(AF_INET, 12345, 0) }
        let failure = errno
        #expect(bad == -1)
        #expect(failure == EINVAL)
    }

    @Test("replication over a 50 ms RTT, 1 % loss WAN ends with identical regions", arguments: TransportKind.allCases)
    func replicationOverWAN(_ kind: TransportKind) async throws {
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(50), lossRate: 0.01)
        let emulator = try WANEmulator(aToB: link.forward, bToA: link.reverse)
        defer { emulator.shutdown() }
        let pki = try TestPKI()
        defer { pki.remove() }

        let size = 1 << 20, chunk = 65536
        let primaries = try (0..<2).map { i -> Region in
            let region = try Region(name: "wan\(i)", backing: .memory, size: size, chunkSize: chunk)
            fillPattern(region.bytes, seed: UInt64(40 + i))
            return region
        }
        let exports = RegionExports(primaries.map { .init(region: $0) }, scanInterval: .milliseconds(5), logger: testLogger)
        let pair = try WANTransportPair(kind, over: emulator, pki: pki)
        let (server, client) = (pair.server, pair.client)
        let serving = serveFirstConnection(exports, on: server)
        let connection = try await withTimeout(15, "connecting over the WAN") { try await client.connect(to: pair.serverAddress) }
        let stats = await connection.statistics()
        #expect(stats.smoothedRTT >= .milliseconds(45), "the connection's RTT is \(stats.smoothedRTT)")

        let replicas = try primaries.map { try Region(name: $0.name, backing: .memory, size: size, chunkSize: chunk) }
        let mirrors = replicas.map { RegionMirror(region: $0) }
        let running = mirrors.map { mirror in Task { try await mirror.run(over: connection) } }
        for (primary, replica) in zip(primaries, replicas) { try await waitConverged(primary, replica, within: 40) }

        // Changes after the initial sync travel too.
        for (i, primary) in primaries.enumerated() {
            for offset in [5, 3 * chunk + 99, size - 1] { primary.bytes[offset] = UInt8(truncatingIfNeeded: 0x70 + i) }
        }
        for (primary, replica) in zip(primaries, replicas) {
            try await waitConverged(primary, replica, within: 20)
            #expect(regionSHA(primary) == regionSHA(replica))
        }
        let wan = emulator.statistics()
        #expect(wan.aToB.droppedByLoss > 0, "\(wan)")
        #expect(wan.aToB.packetsPassed > UInt64(2 * size / 1500))

        for task in running { task.cancel() }
        serving.cancel()
        await client.close()
        await server.close()
    }

    /// The regression of 2026-12-07: with lanes, a region's pass fits in the
    /// send buffers, no write waits for the link, and the old policy took
    /// the link for fast after its first 100 ms and compressed nothing more.
    /// Over a 100 Mbit/s link the compressor is tens of times faster than
    /// the link, so every chunk must go compressed, and the replica must
    /// still equal the primary.
    @Test("a laned pass over a slow link goes compressed, and the replica equals its primary",
          arguments: [TransportKind.quic, .tcp])
    func compressionOverSlowLink(_ kind: TransportKind) async throws {
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(10), rateBitsPerSecond: 100_000_000, queueLimitBytes: 512 << 10)
        let emulator = try WANEmulator(aToB: link.forward, bToA: link.reverse)
        defer { emulator.shutdown() }
        let pki = try TestPKI()
        defer { pki.remove() }

        // 128 MiB of words from a 64-word vocabulary: lz4 takes it to ~0.4.
        // Encoding it takes longer than the old policy's first window.
        let size = 128 << 20, chunk = 65536
        let primary = try Region(name: "text", backing: .memory, size: size, chunkSize: chunk)
        var rng = SystemRandomNumberGenerator()
        let vocabulary = (0..<64).map { _ in rng.next() as UInt64 }
        let tile = 4 << 20
        for offset in stride(from: 0, to: tile, by: 8) {
            primary.bytes.storeBytes(of: vocabulary[Int(rng.next() % 64)], toByteOffset: offset, as: UInt64.self)
        }
        // Chunks are compressed one by one, so repeating the tile costs nothing in ratio.
        for offset in stride(from: tile, to: size, by: tile) {
            (primary.bytes.baseAddress! + offset).copyMemory(from: primary.bytes.baseAddress!, byteCount: tile)
        }
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5),
                                    lanes: LanePolicy(count: 8), logger: testLogger)
        let pair = try WANTransportPair(kind, over: emulator, pki: pki)
        let (server, client) = (pair.server, pair.client)
        // What a peer's HELLO offers: PAGES, both codecs, lanes.
        let serving = serveFirstConnection(exports, on: server, offered: .all)
        let connection = try await withTimeout(15, "connecting over the WAN") { try await client.connect(to: pair.serverAddress) }
        let replica = try Region(name: "text", backing: .memory, size: size, chunkSize: chunk)
        let mirror = RegionMirror(region: replica)
        let running = Task { try await mirror.run(over: connection) }
        // Uncompressed, 128 MiB take 11 s at 100 Mbit/s; compressed, about 5.
        try await waitSynced(mirror, within: 60)
        #expect(regionSHA(primary) == regionSHA(replica))

        let savings = try #require(exports.wireSavings()["text"])
        #expect(savings.bytesDirtied == UInt64(size))
        #expect(Double(savings.compressionInputBytes) >= 0.9 * Double(size), "compressed \(savings.compressionInputBytes) of \(size) bytes")
        #expect(savings.wireRatio < 0.6, "\(savings.wireRatio) wire bytes per region byte")
        #expect(emulator.statistics().aToB.bytesPassed < UInt64(Double(size) * 0.7))

        running.cancel()
        serving.cancel()
        await client.close()
        await server.close()
    }
}
