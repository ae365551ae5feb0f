@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaTransportCore
import Foundation
import Testing

/// Eager passes spread over lanes (LANES/LANE/LANES_END, docs/PROTOCOL.md
/// §5 item 3): every chunk arrives, SYNCED's check passes, and the replica
/// equals its primary, over each transport; a LANE that names no pass is
/// refused.
@Suite("Pass lanes: a region's large passes over several streams", .serialized)
struct PassLanesTests {
    static let chunkSize = 65536

    @Test("a pass over four streams, written to while it runs, leaves the replica equal to its primary",
          arguments: [TransportKind.quic, .tcp, .tcpPerRegion])
    func passOverLanes(kind: TransportKind) async throws {
        // A TCP lane joins after its own handshake: a longer pass gives it
        // time to, on a loaded host (24 MiB went by with no lane joined once).
        let size = kind == .tcpPerRegion ? 96 << 20 : 24 << 20
        let primary = try Region(name: "laned", backing: .memory, size: size, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 11)
        // Zero chunks too: they travel as short PAGES frames on the lanes.
        for chunk in stride(from: 0, to: size / Self.chunkSize, by: 5) {
            UnsafeMutableRawBufferPointer(rebasing: primary.bytes[chunk * Self.chunkSize..<(chunk + 1) * Self.chunkSize])
                .initializeMemory(as: UInt8.self, repeating: 0)
        }
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5),
                                    lanes: LanePolicy(count: 4, minimumPassBytes: 0), logger: testLogger)
        let pair = try await TransportReplicationPair(kind, exports: exports)
        let replica = try Region(name: "laned", backing: .memory, size: size, chunkSize: Self.chunkSize)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let running = Task { try await mirror.run(over: pair.client) }
        defer { running.cancel() }
        // A writer changes pages while the pass is under way: those chunks
        // go again on the region stream after SYNCED.
        let writing = Task {
            var random = SystemRandomNumberGenerator()
            for i in 0..<200 where !Task.isCancelled {
                let page = Int.random(in: 0..<(size / 4096), using: &random)
                fillPattern(UnsafeMutableRawBufferPointer(rebasing: primary.bytes[page * 4096..<(page + 1) * 4096]),
                            seed: UInt64(1000 + i))
                try? await Task.sleep(for: .milliseconds(1))
            }
        }
        try await waitSynced(mirror, within: 60)
        await writing.value
        try await waitConverged(primary, replica, within: 60)
        let state = try #require(exports.mirrorStates().first)
        // Lanes join as they come: a stream of the connection at once, a TCP
        // connection per lane only after its handshake, which a loaded host
        // may finish after the pass.
        if kind == .tcpPerRegion {
            #expect(state.passStreams >= 2, "the pass went over \(state.passStreams) streams")
        } else {
            #expect(state.passStreams == 4, "the pass went over \(state.passStreams) streams")
        }
        #expect(mirror.currentProgress.selfCheckPassed == true)
        #expect(regionSHA(primary) == regionSHA(replica))
        running.cancel()
        await pair.close()
    }

    @Test("large later passes go over lanes too (LANES_END), small ones on the region stream; the replica stays equal",
          arguments: [TransportKind.quic, .tcp])
    func laterPasses(kind: TransportKind) async throws {
        let size = 16 << 20
        let primary = try Region(name: "bursts", backing: .memory, size: size, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 21)
        // Passes of 2 MiB or more (32 chunks) go over lanes.
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5),
                                    lanes: LanePolicy(count: 3, minimumPassBytes: 2 << 20), logger: testLogger)
        let pair = try await TransportReplicationPair(kind, exports: exports)
        let replica = try Region(name: "bursts", backing: .memory, size: size, chunkSize: Self.chunkSize)
        let mirror = RegionMirror(region: replica, offersHeldChunks: false)
        let running = Task { try await mirror.run(over: pair.client) }
        defer { running.cancel() }
        try await waitSynced(mirror, within: 60)
        try await waitConverged(primary, replica, within: 60)
        let initial = try #require(exports.mirrorStates().first).passesOverLanes
        #expect(initial == 1, "the initial pass went over lanes")
        // Bursts: 3 MiB of each quarter rewritten at once (a laned pass),
        // then a single page (a pass on the region stream), in turn.
        // Each burst is made aside and copied in at once, so one scan finds it whole.
        let burstBytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 << 20, alignment: 64)
        defer { burstBytes.deallocate() }
        for burst in 0..<4 {
            let start = burst << 22, page = start + (7 << 19)
            fillPattern(burstBytes, seed: UInt64(100 + burst))
            UnsafeMutableRawBufferPointer(rebasing: primary.bytes[start..<start + (3 << 20)]).copyMemory(from: UnsafeRawBufferPointer(burstBytes))
            try await Task.sleep(for: .milliseconds(30))
            fillPattern(UnsafeMutableRawBufferPointer(rebasing: primary.bytes[page..<page + 4096]), seed: UInt64(200 + burst))
            try await Task.sleep(for: .milliseconds(30))
        }
        try await waitConverged(primary, replica, within: 60)
        // Every version sent gets acknowledged: the ACK covers what the lanes brought.
        let deadline = ContinuousClock.now + .seconds(10)
        while let s = exports.mirrorStates().first, s.acknowledgedVersion != s.sentVersion, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let state = try #require(exports.mirrorStates().first)
        #expect(state.passesOverLanes >= 3, "\(state.passesOverLanes) passes over lanes")
        #expect(state.acknowledgedVersion == state.sentVersion, "ACK \(state.acknowledgedVersion) of \(state.sentVersion)")
        #expect(regionSHA(primary) == regionSHA(replica))
        running.cancel()
        await pair.close()
    }

    @Test("a region below the policy's size, or a mirror that did not offer lanes, gets its pass on one stream")
    func noLanes() async throws {
        for (minimum, offered) in [(64 << 20, WireCapabilities.all), (0, [.pages])] {
            let size = 4 << 20
            let primary = try Region(name: "plain", backing: .memory, size: size, chunkSize: Self.chunkSize)
            fillPattern(primary.bytes, seed: 3)
            let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5),
                                        lanes: LanePolicy(count: 4, minimumPassBytes: minimum), logger: testLogger)
            let pair = try await TransportReplicationPair(.quic, exports: exports, offered: offered)
            let replica = try Region(name: "plain", backing: .memory, size: size, chunkSize: Self.chunkSize)
            let mirror = RegionMirror(region: replica, offersHeldChunks: false)
            let running = Task { try await mirror.run(over: pair.client) }
            try await waitSynced(mirror, within: 60)
            try await waitConverged(primary, replica, within: 30)
            #expect(exports.mirrorStates().first?.passStreams == 1)
            running.cancel()
            await pair.close()
        }
    }

    @Test("a second LANE with an index that already joined is refused with unexpected_frame")
    func duplicateLane() async throws {
        let primary = try Region(name: "r", backing: .memory, size: 4 << 20, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 5)
        let exports = RegionExports([.init(region: primary)], lanes: LanePolicy(count: 4, minimumPassBytes: 0), logger: testLogger)
        let pair = try await TransportReplicationPair(.quic, exports: exports)
        let main = FrameStream(try await pair.client.openStream())
        try await main.send(.subscribe(.init(name: "r", size: 4 << 20, chunkSize: UInt64(Self.chunkSize), mode: .eager,
                                             hashKey: ChunkHashKey.random().bytes)))
        guard case .lanes(_, let token)? = try await main.receive() else {
            Issue.record("the exporter did not open the pass with LANES")
            await pair.close()
            return
        }
        let first = FrameStream(try await pair.client.openStream())
        try await first.send(.lane(token: token, index: 1))
        try await first.stream.finish()
        // The first joins (its frames, or FIN if the pass was over); the
        // same index again is refused.
        _ = try await first.receive()
        let second = FrameStream(try await pair.client.openStream())
        try await second.send(.lane(token: token, index: 1))
        try await second.stream.finish()
        var answer = try await second.receive()
        while case .write? = answer { answer = try await second.receive() }
        expectUnexpectedFrame(answer)
        await pair.close()
    }

    @Test("a LANE naming no pass under way is refused with unexpected_frame")
    func strayLane() async throws {
        let primary = try Region(name: "r", backing: .memory, size: 1 << 20, chunkSize: Self.chunkSize)
        let exports = RegionExports([.init(region: primary)], lanes: LanePolicy(count: 4, minimumPassBytes: 0), logger: testLogger)
        let pair = try await TransportReplicationPair(.quic, exports: exports)
        let frames = FrameStream(try await pair.client.openStream())
        try await frames.send(.lane(token: [UInt8](repeating: 7, count: FrameLimits.laneTokenBytes), index: 1))
        try await frames.stream.finish()
        expectUnexpectedFrame(try await frames.receive())
        await pair.close()
    }

    /// Records an issue unless `answer` is ERROR with `unexpected_frame`.
    private func expectUnexpectedFrame(_ answer: Frame?, sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .error(let code, let message)? = answer else {
            Issue.record("expected ERROR, got \(String(describing: answer))", sourceLocation: sourceLocation)
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedFrame.rawValue, "\(message)", sourceLocation: sourceLocation)
    }

    /// A mirror subscribed to a scripted primary that opened a pass over
    /// two streams; `script` plays the primary's side from there, given
    /// the region stream and the lane. Returns how the mirror's run ended
    /// and what came next on the region stream after any ACKs: a frame,
    /// its end (nil), or how reading it failed.
    private func scriptedPass(_ script: (FrameStream, FrameStream) async throws -> Void) async throws
        -> (run: (any Error)?, answer: Result<Frame?, any Error>, mirror: RegionMirror) {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try TransportPair(.quic, pki: pki)
        do {
            let (client, server) = try await pair.connect()
            let replica = try Region(name: "r", backing: .memory, size: 1 << 20, chunkSize: Self.chunkSize)
            let mirror = RegionMirror(region: replica, offersHeldChunks: false)
            let running = Task { try await mirror.run(over: client) }
            let main = FrameStream(try await server.acceptStream())
            guard case .subscribe? = try await main.receive() else { throw ScriptFailure("the mirror did not subscribe") }
            let token = [UInt8](repeating: 3, count: FrameLimits.laneTokenBytes)
            try await main.send(.lanes(count: 2, token: token))
            let lane = FrameStream(try await server.acceptStream())
            guard case .lane(token, 1)? = try await lane.receive() else { throw ScriptFailure("the mirror did not open lane 1") }
            try await script(main, lane)
            // A mirror that never answers must fail the test, not hang it:
            // a read cannot be cancelled, but resetting our end wakes it.
            let watchdog = Task {
                try await Task.sleep(for: .seconds(20))
                await main.stream.reset(errorCode: Self.watchdogCode)
            }
            defer { watchdog.cancel() }
            var answer: Result<Frame?, any Error>
            while true {
                do { answer = .success(try await main.receive()) } catch { answer = .failure(error) }
                guard case .success(.ack?) = answer else { break }
            }
            let ended: (any Error)?
            do { try await withTimeout(20, "the mirror's run") { try await running.value }; ended = nil } catch { ended = error }
            await pair.close()
            return (ended, answer, mirror)
        } catch {
            await pair.close()
            throw error
        }
    }

    /// The code a scripted primary resets its region stream with when the
    /// mirror said nothing for 20 s.
    static let watchdogCode: UInt64 = 0x7e57

    struct ScriptFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    @Test("SYNCED after lanes that left a version out is refused with unexpected_frame; the replica is not synced")
    func syncedBeforeEveryVersion() async throws {
        let (ended, answer, mirror) = try await scriptedPass { main, lane in
            // Version 2 on the lane, version 1 nowhere, then the pass's end.
            try await lane.send(.write(chunk: 0, version: 2, bytes: patternBytes(count: Self.chunkSize, seed: 1)))
            try await lane.stream.finish()
            try await main.send(.synced(version: 2, digest: [UInt8](repeating: 0, count: 32)))
        }
        switch answer {
        case .success(let frame): expectUnexpectedFrame(frame)
        case .failure(let error): Issue.record("expected ERROR, the region stream failed: \(error)")
        }
        guard case .violation(let violation)? = ended as? ReplicationError else {
            Issue.record("the run ended with \(String(describing: ended))")
            return
        }
        #expect(violation.code == .unexpectedFrame)
        #expect(!mirror.initialSyncComplete)
    }

    @Test("a lane reset in the middle of a pass ends the run with the reset, resets the region stream, and the replica is not synced")
    func laneResetMidPass() async throws {
        let (ended, answer, mirror) = try await scriptedPass { main, lane in
            try await lane.send(.write(chunk: 0, version: 1, bytes: patternBytes(count: Self.chunkSize, seed: 1)))
            await lane.stream.reset(errorCode: ProtocolErrorCode.internalError.rawValue)
            try await main.send(.synced(version: 2, digest: [UInt8](repeating: 0, count: 32)))
        }
        guard case .streamReset(let code)? = ended as? TransportError else {
            Issue.record("the run ended with \(String(describing: ended))")
            return
        }
        #expect(code == ProtocolErrorCode.internalError.rawValue)
        guard case .failure(TransportError.streamReset(let mainCode)) = answer else {
            Issue.record("the region stream was not reset: \(String(describing: answer))")
            return
        }
        #expect(mainCode == ProtocolErrorCode.internalError.rawValue)
        #expect(!mirror.initialSyncComplete)
    }
}
