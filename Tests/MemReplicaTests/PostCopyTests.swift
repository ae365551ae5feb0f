@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaTransportCore
import Foundation
import Logging
import Testing

private func quietLogger() -> Logger {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}

private func waitUntil(_ what: String, seconds: Double, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else { throw TimeoutError(what: what, seconds: seconds) }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// Reads of `count` random words of a lazy replica, compared with the primary.
private func compareRandomWords(_ replica: Region, _ primary: Region, count: Int) -> Int {
    var rng = SystemRandomNumberGenerator()
    var mismatches = 0
    for _ in 0..<count {
        let offset = Int.random(in: 0..<(primary.geometry.size / 8), using: &rng) * 8
        let got = replica.bytes.load(fromByteOffset: offset, as: UInt64.self)
        let want = primary.bytes.load(fromByteOffset: offset, as: UInt64.self)
        if got != want { mismatches += 1 }
    }
    return mismatches
}

@Suite("Post-copy (lazy) mirrors", .serialized)
struct PostCopyTests {
    @Test("a 256 MiB lazy replica answers random reads from 4 threads before the pull ends; SHA-256 equal at the end",
          arguments: TransportKind.allCases)
    func randomReadsBeforePullEnds(_ kind: TransportKind) async throws {
        let size = 256 << 20
        let primary = try Region(name: "lazy", backing: .memory, size: size, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 11)
        let rp = try await TransportReplicationPair(kind, exports: RegionExports([.init(region: primary)], logger: quietLogger()))
        let replica = try Region(name: "lazy", backing: .memory, size: size, chunkSize: 65536)
        let mirror = try PostCopyMirror(region: replica)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitUntil("the lazy subscription", seconds: 10) { mirror.progress.subscribed }

        var readers: [BlockingRead<Int>] = []
        for _ in 0..<4 {
            readers.append(BlockingRead<Int> { compareRandomWords(replica, primary, count: 200) })
        }
        var mismatches = 0
        for r in readers { mismatches += try await r.wait(seconds: 60) }
        let atReadsEnd = mirror.progress
        #expect(mismatches == 0)
        #expect(atReadsEnd.faults > 0)
        // Over TCP on loopback the pull can outrun 800 faulting reads on a
        // slow (sanitized, loaded) machine; over QUIC it never has.
        if kind == .quic {
            #expect(atReadsEnd.chunksPresent < atReadsEnd.chunkCount, "the reads should finish before the background pull")
        }

        try await waitUntil("the background pull", seconds: 120) { mirror.progress.complete }
        #expect(regionSHA(replica) == regionSHA(primary))
        let end = mirror.progress
        #expect(end.faultsServed == end.faults)
        running.cancel()
        await rp.close()
        _ = await running.result
        mirror.stop()
    }

    @Test("after the primary writes, the notified replica returns the new bytes on the next read and refills",
          arguments: TransportKind.allCases)
    func dirtyInvalidates(_ kind: TransportKind) async throws {
        let size = 4 << 20
        let primary = try Region(name: "notify", backing: .memory, size: size, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 3)
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5), logger: quietLogger())
        let rp = try await TransportReplicationPair(kind, exports: exports)
        let replica = try Region(name: "notify", backing: .memory, size: size, chunkSize: 65536)
        let mirror = try PostCopyMirror(region: replica)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitUntil("the pull", seconds: 30) { mirror.progress.complete }
        #expect(regionSHA(replica) == regionSHA(primary))

        let offset = 3 * 65536 + 1000
        let marker: UInt64 = 0x5eed_5eed_5eed_5eed
        primary.bytes.storeBytes(of: marker, toByteOffset: offset, as: UInt64.self)
        try await waitUntil("the DIRTY", seconds: 10) { mirror.progress.chunksInvalidated >= 1 }
        // The write-protect tracker may report the page as its store faults,
        // before the store lands (WriteProtectTracker); it then reports it
        // again, so a read after the first DIRTY may still see the old word,
        // and one after the next sees the new. Two DIRTYs at most.
        var fresh: UInt64 = 0
        for _ in 0..<3 where fresh != marker {
            let invalidated = mirror.progress.chunksInvalidated
            let read = BlockingRead<UInt64> { replica.bytes.load(fromByteOffset: offset, as: UInt64.self) }
            fresh = try await read.wait(seconds: 10)
            if fresh != marker {
                try await waitUntil("the second DIRTY", seconds: 10) { mirror.progress.chunksInvalidated > invalidated }
            }
        }
        #expect(fresh == marker)
        try await waitUntil("the refill", seconds: 30) { mirror.progress.complete }
        #expect(regionSHA(replica) == regionSHA(primary))
        running.cancel()
        await rp.close()
        _ = await running.result
        mirror.stop()
    }

    @Test("a thread faulting while the primary is gone waits, and is served once a new connection runs",
          arguments: TransportKind.allCases)
    func faultWaitsForReconnect(_ kind: TransportKind) async throws {
        let size = 16 << 20
        let primary = try Region(name: "gone", backing: .memory, size: size, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 8)
        let exports = RegionExports([.init(region: primary)], logger: quietLogger())
        var options = PostCopyMirror.Options()
        options.backgroundPull = false
        let replica = try Region(name: "gone", backing: .memory, size: size, chunkSize: 65536)
        let mirror = try PostCopyMirror(region: replica, options: options)

        let first = try await TransportReplicationPair(kind, exports: exports)
        let running = Task { try await mirror.run(over: first.client) }
        try await waitUntil("the lazy subscription", seconds: 10) { mirror.progress.subscribed }
        await first.close()
        await #expect(throws: (any Error).self) { try await running.value }

        let offset = 7 * 65536 + 8
        let read = BlockingRead<UInt64> { replica.bytes.load(fromByteOffset: offset, as: UInt64.self) }
        try await read.waitUntilAsleepInFault()
        try await waitUntil("the fault to be counted as waiting", seconds: 10) { mirror.progress.oldestFaultWaiting != nil }
        #expect(read.value == nil, "nothing can serve the fault while the primary is gone")

        let second = try await TransportReplicationPair(kind, exports: exports)
        let resumed = Task { try await mirror.run(over: second.client) }
        let served = try await read.wait(seconds: 10)
        let expected = primary.bytes.load(fromByteOffset: offset, as: UInt64.self)
        #expect(served == expected)
        #expect(mirror.progress.oldestFaultWaiting == nil)
        resumed.cancel()
        await second.close()
        _ = await resumed.result
        mirror.stop()
    }

    @Test("a lazy mirror that saw several DIRTY epochs follows its primary across a restart (new generation): fresh bytes, no refusal")
    func followsPrimaryAcrossRestart() async throws {
        let size = 1 << 20, chunk = 65536
        let primary = try Region(name: "restart", backing: .memory, size: size, chunkSize: chunk)
        fillPattern(primary.bytes, seed: 21)
        let id = RegionIdentity.fresh().id
        let replica = try Region(name: "restart", backing: .memory, size: size, chunkSize: chunk)
        let mirror = try PostCopyMirror(region: replica)

        // First life of the primary: generation 1, epochs 1, 2, 3 ...
        let firstLife = RegionIdentity(id: id, generation: 1)
        let first = try await ReplicationPair(exports: RegionExports([.init(region: primary, identity: firstLife)],
                                                                     scanInterval: .milliseconds(5), logger: quietLogger()))
        let running = Task { try await mirror.run(over: first.client, identity: firstLife) }
        try await waitUntil("the pull", seconds: 30) { mirror.progress.complete }
        for round in 1...4 {
            primary.bytes.storeBytes(of: UInt64(round), toByteOffset: round * chunk, as: UInt64.self)
            try await waitUntil("DIRTY epoch \(round)", seconds: 10) { mirror.progress.lastEpoch >= UInt64(round) }
        }
        await first.close()
        await #expect(throws: (any Error).self) { try await running.value }

        // Second life: a new process numbers epochs from 1 again, in generation 2.
        let secondLife = RegionIdentity(id: id, generation: 2)
        let second = try await ReplicationPair(exports: RegionExports([.init(region: primary, identity: secondLife)],
                                                                      scanInterval: .milliseconds(5), logger: quietLogger()))
        let resumed = Task { try await mirror.run(over: second.client, identity: secondLife) }
        try await waitUntil("the resubscription", seconds: 10) { mirror.progress.subscribed }
        let k = 9, marker: UInt64 = 0x0bad_cafe_f00d_0001
        let invalidated = mirror.progress.chunksInvalidated
        primary.bytes.storeBytes(of: marker, toByteOffset: k * chunk + 16, as: UInt64.self)
        // Counted, not watched: the background pull may refill the chunk
        // before a poll would see it missing.
        try await waitUntil("the DIRTY for chunk \(k)", seconds: 10) {
            mirror.progress.lastEpoch >= 1 && mirror.progress.chunksInvalidated > invalidated
        }
        let read = BlockingRead<UInt64> { replica.bytes.load(fromByteOffset: k * chunk + 16, as: UInt64.self) }
        #expect(try await read.wait(seconds: 10) == marker)
        try await waitUntil("the refill", seconds: 30) { mirror.progress.complete }
        #expect(regionSHA(replica) == regionSHA(primary))
        #expect(mirror.followedIdentity == secondLife)
        resumed.cancel()
        await second.close()
        mirror.stop()
    }

    @Test("an exporter older than the generation a mirror followed is refused as stale, on eager and lazy subscriptions")
    func staleGenerationRefused() async throws {
        let primary = try Region(name: "old", backing: .memory, size: 65536, chunkSize: 65536)
        let old = RegionIdentity(id: RegionIdentity.fresh().id, generation: 2)
        let rp = try await ReplicationPair(exports: RegionExports([.init(region: primary, identity: old)], logger: quietLogger()))
        let newer = RegionIdentity(id: old.id, generation: 3)
        let eager = try Region(name: "old", backing: .memory, size: 65536, chunkSize: 65536)
        do {
            try await withTimeout(10, "refusal") { try await RegionMirror(region: eager, known: newer).run(over: rp.client) }
            Issue.record("a stale primary was followed")
        } catch ReplicationError.refusedByPeer(let code, _) {
            #expect(code == ProtocolErrorCode.staleGeneration.rawValue)
        }
        // Same id, same or newer generation here: followed.
        let frames = FrameStream(try await rp.client.openStream())
        try await frames.send(.subscribe(.init(name: "old", size: 65536, chunkSize: 65536, mode: .lazy,
                                               hashKey: ChunkHashKey.random().bytes, knownRegionID: old.id, knownGeneration: 2)))
        guard case .synced? = try await frames.receive() else { Issue.record("same generation refused"); return }
        await rp.close()
    }

    @Test("a lazy mirror stopped under a thread asleep in a fault: it wakes onto private zeros, and no page lands in the file")
    func stopNeverPlantsZeros() async throws {
        let path = "/dev/shm/mr-stop-\(UUID().uuidString.prefix(8))"
        defer { unlink(path) }
        let primary = try Region(name: "stop", backing: .memory, size: 1 << 20, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 12)
        let rp = try await ReplicationPair(exports: RegionExports([.init(region: primary)], logger: quietLogger()))
        var options = PostCopyMirror.Options()
        options.backgroundPull = false
        let replica = try Region(name: "stop", backing: .file(path: path), size: 1 << 20, chunkSize: 65536, allocation: .sparse)
        let mirror = try PostCopyMirror(region: replica, options: options)
        let running = Task { try await mirror.run(over: rp.client) }
        try await waitUntil("the lazy subscription", seconds: 10) { mirror.progress.subscribed }
        running.cancel()
        await rp.close()
        let read = BlockingRead<UInt64> { replica.bytes.load(fromByteOffset: 3 * 65536 + 8, as: UInt64.self) }
        try await waitUntil("the fault", seconds: 10) { mirror.progress.faults >= 1 }
        mirror.stop()
        #expect(try await read.wait(seconds: 10) == 0)
        #expect(mirror.progress.stopped && !mirror.isChunkPresent(3))
        // The file itself: still a hole where nothing arrived.
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        let SEEK_DATA: Int32 = 3
        #expect(lseek(fd, 0, SEEK_DATA) == -1, "the file must hold no page the primary never sent")
    }

    @Test("a reads stream answers READ with one DATA per chunk, and refuses a READ past the end or another frame")
    func readsStream() async throws {
        let primary = try Region(name: "r", backing: .memory, size: 4 * 65536, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 4)
        let rp = try await ReplicationPair(exports: RegionExports([.init(region: primary)], logger: quietLogger()))
        func readsStream() async throws -> FrameStream {
            let frames = FrameStream(try await rp.client.openStream())
            try await frames.send(.subscribe(.init(name: "r", size: 4 * 65536, chunkSize: 65536, mode: .reads)))
            return frames
        }
        let good = try await readsStream()
        try await good.send(.read(firstChunk: 1, count: 2))
        for chunk in [1, 2] {
            let expected = try primary.copyChunk(chunk)
            let frame = try await good.receive()
            #expect(frame == .data(firstChunk: UInt64(chunk), bytes: expected))
        }
        for (request, code) in [(Frame.read(firstChunk: 3, count: 2), ProtocolErrorCode.chunkOutOfRange),
                                (.ack(version: 1), .unexpectedFrame)] {
            let bad = try await readsStream()
            try await bad.send(request)
            let answer = try await bad.receive()
            guard case .error(let got, _)? = answer else {
                Issue.record("expected ERROR, got \(String(describing: answer))")
                continue
            }
            #expect(got == code.rawValue)
        }
        await rp.close()
    }

    /// A primary whose lazy region stream answers SUBSCRIBE with `script`;
    /// its reads stream is accepted and left silent.
    private func lazyMirrorAgainstScript(_ script: [Frame]) async throws -> ProtocolErrorCode? {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try EndpointPair(pki: pki)
        let (client, server) = try await pair.connect()
        let liar = Task {
            var held: [FrameStream] = []
            while let stream = try? await server.acceptStream() {
                let frames = FrameStream(stream)
                held.append(frames)
                guard case .subscribe(let s)? = try? await frames.receive(), s.mode == .lazy else { continue }
                for f in script { try? await frames.send(f) }
            }
            _ = held
        }
        defer { liar.cancel() }
        let replica = try Region(name: "r", backing: .memory, size: 2 * 4096, chunkSize: 4096)
        var options = PostCopyMirror.Options()
        options.backgroundPull = false
        let mirror = try PostCopyMirror(region: replica, options: options)
        defer { mirror.stop() }
        do {
            try await withTimeout(10, "lazy mirror") { try await mirror.run(over: client) }
            await pair.close()
            return nil
        } catch ReplicationError.violation(let v) {
            await pair.close()
            return v.code
        }
    }

    @Test("READs sent with the SUBSCRIBE, and one asking for more than the send buffer holds, are answered in order")
    func readsStreamBatchedAndBackpressured() async throws {
        let chunkSize = 65536
        let primary = try Region(name: "big", backing: .memory, size: 96 * chunkSize, chunkSize: chunkSize)
        fillPattern(primary.bytes, seed: 9)
        let pki = try TestPKI()
        defer { pki.remove() }
        // A send buffer of two chunks: a 64-chunk READ is answered a little
        // at a time, as the replica acknowledges.
        var serverConfig = quicConfig(server: true)
        serverConfig.streamSendBuffer = 2 * chunkSize
        let pair = try EndpointPair(pki: pki, serverConfig: serverConfig)
        let (client, server) = try await pair.connect()
        let exports = RegionExports([.init(region: primary)], logger: quietLogger())
        let serving = Task {
            while let stream = try? await server.acceptStream() {
                Task { await exports.serve(stream, peer: server.peerIdentity) }
            }
        }
        defer { serving.cancel() }
        let frames = FrameStream(try await client.openStream())
        let subscribe = Frame.subscribe(.init(name: "big", size: UInt64(96 * chunkSize), chunkSize: UInt64(chunkSize),
                                              mode: .reads))
        // One write: the primary reads the READs with the SUBSCRIBE.
        try await frames.stream.write(try subscribe.encoded() + Frame.read(firstChunk: 5, count: 1).encoded()
            + Frame.read(firstChunk: 30, count: 64).encoded() + Frame.read(firstChunk: 0, count: 2).encoded())
        for chunk in [5] + Array(30..<94) + [0, 1] {
            let frame = try await withTimeout(10, "DATA for chunk \(chunk)") { try await frames.receive() }
            guard case .data(let first, let bytes)? = frame else {
                Issue.record("expected DATA for chunk \(chunk), got \(String(describing: frame))")
                break
            }
            #expect(first == UInt64(chunk))
            #expect(bytes == (try primary.copyChunk(chunk)))
        }
        // A READ of more chunks than a frame may ask for is refused by size.
        let oversize = FrameStream(try await client.openStream())
        try await oversize.send(subscribe)
        // Encoding refuses such a READ: its bytes are made by hand.
        var payload: [UInt8] = []
        VarInt.encode(0, into: &payload)
        VarInt.encode(FrameLimits.maxReadChunks + 1, into: &payload)
        try await oversize.stream.write([Frame.TypeCode.read.rawValue, UInt8(payload.count)] + payload)
        let answer = try await withTimeout(10, "ERROR") { try await oversize.receive() }
        guard case .error(let code, _)? = answer else {
            Issue.record("expected ERROR, got \(String(describing: answer))")
            await pair.close()
            return
        }
        #expect(code == ProtocolErrorCode.frameTooLarge.rawValue)
        await pair.close()
    }

    /// A lazy mirror against a primary whose reads stream answers the first
    /// READ with `answer(chunk)`; a thread faults on chunk 1. Returns the
    /// code the mirror ended with and how many chunks it installed.
    private func lazyMirrorAgainstLyingReads(_ answer: @escaping @Sendable (UInt64) -> [UInt8]) async throws
        -> (code: ProtocolErrorCode?, installed: Int) {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try EndpointPair(pki: pki)
        let (client, server) = try await pair.connect()
        let liar = Task {
            var held: [FrameStream] = []
            while let stream = try? await server.acceptStream() {
                let frames = FrameStream(stream)
                held.append(frames)
                Task {
                    guard case .subscribe(let s)? = try? await frames.receive() else { return }
                    switch s.mode {
                    case .lazy: try? await frames.send(.synced(version: 0))
                    case .reads, .pull:
                        guard case .read(let first, _)? = try? await frames.receive() else { return }
                        try? await frames.stream.write(answer(first))
                    case .eager, .verify: return
                    }
                }
            }
            _ = held
        }
        defer { liar.cancel() }
        let replica = try Region(name: "r", backing: .memory, size: 4 * 4096, chunkSize: 4096)
        var options = PostCopyMirror.Options()
        options.backgroundPull = false
        let mirror = try PostCopyMirror(region: replica, options: options)
        let running = Task { try await mirror.run(over: client) }
        try await waitUntil("the lazy subscription", seconds: 10) { mirror.progress.subscribed }
        let read = BlockingRead<UInt64> { replica.bytes.load(fromByteOffset: 4096, as: UInt64.self) }
        var code: ProtocolErrorCode?
        do {
            try await withTimeout(10, "lazy mirror") { try await running.value }
        } catch ReplicationError.violation(let v) {
            code = v.code
        }
        let installed = mirror.progress.chunksPresent
        // The faulting thread wakes once the mirror stops, reading the hole.
        mirror.stop()
        #expect(try await read.wait(seconds: 10) == 0)
        await pair.close()
        return (code, installed)
    }

    @Test("DATA for another chunk, of the wrong length, or any other frame on a fault's reads stream ends the mirror with its code")
    func lyingReadsStream() async throws {
        let chunk = [UInt8](repeating: 0xab, count: 4096)
        let cases: [(String, @Sendable (UInt64) -> [UInt8], ProtocolErrorCode)] = [
            ("another chunk", { first in try! Frame.data(firstChunk: first + 1, bytes: chunk).encoded() }, .unexpectedFrame),
            ("short", { first in try! Frame.data(firstChunk: first, bytes: Array(chunk.prefix(100))).encoded() }, .malformedFrame),
            ("not DATA", { _ in try! Frame.ack(version: 1).encoded() }, .unexpectedFrame),
            ("unknown type", { _ in [0x7f, 0x00] }, .unknownFrameType),
        ]
        for (what, answer, expected) in cases {
            let (code, installed) = try await lazyMirrorAgainstLyingReads(answer)
            #expect(code == expected, "\(what)")
            #expect(installed == 0, "\(what): nothing may be installed from a lying answer")
        }
    }

    @Test("a DIRTY past the end, an epoch going backwards and a WRITE to a lazy mirror end it with their codes")
    func badLazyPrimary() async throws {
        #expect(try await lazyMirrorAgainstScript([.synced(version: 0), .dirty(epoch: 1, chunks: [2])]) == .chunkOutOfRange)
        #expect(try await lazyMirrorAgainstScript([.dirty(epoch: 5, chunks: [0]), .dirty(epoch: 4, chunks: [1])])
            == .versionWentBackwards)
        #expect(try await lazyMirrorAgainstScript([.write(chunk: 0, version: 1, bytes: [UInt8](repeating: 0, count: 4096))])
            == .unexpectedFrame)
    }

    @Test("a lazy replica on a regular file is refused with a reason")
    func regularFileRefused() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("lazy-\(UInt32.random(in: 0...UInt32.max))").path
        defer { unlink(path) }
        let region = try Region(name: "disk", backing: .file(path: path), size: 1 << 20, chunkSize: 65536)
        #expect(throws: PostCopyError.notSharedMemory(region: "disk")) { _ = try PostCopyMirror(region: region) }
    }

    @Test("chunk bookkeeping: DATA that predates a DIRTY is stale; pull runs skip what is present or asked for")
    func presenceBookkeeping() {
        var p = ChunkPresence(chunkCount: 8)
        let fresh = p.faulted(5, at: .now)
        #expect(fresh)
        var due = p.takeFaultRequests().map(\.chunk)
        #expect(due == [5])
        due = p.takeFaultRequests().map(\.chunk)
        #expect(due.isEmpty)
        var run = p.takePullRun(limit: 4)?.map(\.chunk)
        #expect(run == [6, 7], "from the latest fault, stopping at the end")
        run = p.takePullRun(limit: 4)?.map(\.chunk)
        #expect(run == [0, 1, 2, 3], "then wrapping")
        var dropped = p.invalidate(6)
        #expect(!dropped, "not present: nothing to drop")
        var arrival = p.arrived(6, askedAt: 0, forFault: false)
        #expect(arrival == .stale)
        // A fault on a chunk the puller asked for gets its own READ.
        _ = p.faulted(2, at: .now)
        due = p.takeFaultRequests().map(\.chunk)
        #expect(due == [2])
        arrival = p.arrived(5, askedAt: 0, forFault: true)
        #expect(arrival == .install)
        let waited = p.installed(5)
        #expect(waited?.faults == 1, "a thread was waiting on chunk 5")
        arrival = p.arrived(5, askedAt: 0, forFault: false)
        #expect(arrival == .alreadyPresent)
        dropped = p.invalidate(5)
        #expect(dropped)
        _ = p.faulted(5, at: .now)
        due = p.takeFaultRequests().map(\.chunk)
        #expect(due == [5])
    }
}
