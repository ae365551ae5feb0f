@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaTransportCore
import Foundation
import Testing

/// An eager initial pass spread over lanes (LANES/LANE, docs/PROTOCOL.md
/// §5 item 3): every chunk arrives, SYNCED's check passes, and the replica
/// equals its primary, over each transport; a LANE that names no pass is
/// refused.
@Suite("Pass lanes: one region's initial pass over several streams", .serialized)
struct PassLanesTests {
    static let chunkSize = 65536

    @Test("a pass over four streams, written to while it runs, leaves the replica equal to its primary",
          arguments: [TransportKind.quic, .tcp, .tcpPerRegion])
    func passOverLanes(kind: TransportKind) async throws {
        let size = 24 << 20
        let primary = try Region(name: "laned", backing: .memory, size: size, chunkSize: Self.chunkSize)
        fillPattern(primary.bytes, seed: 11)
        // Zero chunks too: they travel as short PAGES frames on the lanes.
        for chunk in stride(from: 0, to: size / Self.chunkSize, by: 5) {
            UnsafeMutableRawBufferPointer(rebasing: primary.bytes[chunk * Self.chunkSize..<(chunk + 1) * Self.chunkSize])
                .initializeMemory(as: UInt8.self, repeating: 0)
        }
        let exports = RegionExports([.init(region: primary)], scanInterval: .milliseconds(5),
                                    lanes: LanePolicy(count: 4, minimumRegionBytes: 0), logger: testLogger)
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
        #expect(state.passStreams == 4, "the pass went over \(state.passStreams) streams")
        #expect(mirror.currentProgress.selfCheckPassed == true)
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
                                        lanes: LanePolicy(count: 4, minimumRegionBytes: minimum), logger: testLogger)
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

    @Test("a LANE naming no pass under way is refused with unexpected_frame")
    func strayLane() async throws {
        let primary = try Region(name: "r", backing: .memory, size: 1 << 20, chunkSize: Self.chunkSize)
        let exports = RegionExports([.init(region: primary)], lanes: LanePolicy(count: 4, minimumRegionBytes: 0), logger: testLogger)
        let pair = try await TransportReplicationPair(.quic, exports: exports)
        let frames = FrameStream(try await pair.client.openStream())
        try await frames.send(.lane(token: [UInt8](repeating: 7, count: FrameLimits.laneTokenBytes), index: 1))
        try await frames.stream.finish()
        let answer = try await frames.receive()
        guard case .error(let code, let message)? = answer else {
            Issue.record("expected ERROR, got \(String(describing: answer))")
            await pair.close()
            return
        }
        #expect(code == ProtocolErrorCode.unexpectedFrame.rawValue, "\(message)")
        await pair.close()
    }
}
