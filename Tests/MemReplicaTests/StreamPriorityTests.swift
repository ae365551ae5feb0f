import MemReplica
import MemReplicaSystem
import MemReplicaWAN
import MemReplicaTransportCore
import MemReplicaQUIC
import Foundation
import Testing

/// `TransportStream.prioritize`: an urgent stream's bytes overtake bulk
/// streams sharing the connection. Over a 20 Mbit/s emulated link with 24
/// bulk streams of 1 MiB queued, a 64 KiB answer served round-robin would
/// get 1/25 of the link (about 0.65 s); sent first, it takes about
/// 26 ms plus the 10 ms round trip and what the TCP kernel buffer already holds.
@Suite("Stream priority", .serialized)
struct StreamPriorityTests {
    static let bulkStreams = 24
    static let bulkBytes = 1 << 20
    static let urgentBytes = 64 << 10

    @Test("an urgent stream's bytes arrive ahead of bulk streams queued before them",
          arguments: [TransportKind.quic, .tcp])
    func urgentOvertakesBulk(_ kind: TransportKind) async throws {
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(10), rateBitsPerSecond: 20_000_000, queueLimitBytes: 256 << 10)
        let emulator = try WANEmulator(aToB: link.forward, bToA: link.reverse)
        defer { emulator.shutdown() }
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try WANTransportPair(kind, over: emulator, pki: pki)
        let (server, client) = (pair.server, pair.client)

        // The server reads every stream to its end; the urgent one starts with 'U'.
        let urgentArrived = Locked<ContinuousClock.Instant?>(nil)
        let bulkFinished = Locked(0)
        let serving = Task {
            guard let connection = await server.accept() else { return }
            await withDiscardingTaskGroup { group in
                while let stream = try? await connection.acceptStream() {
                    group.addTask {
                        guard let bytes = try? await stream.readAll(limit: 2 << 20) else { return }
                        if bytes.first == UInt8(ascii: "U") {
                            if bytes.count == Self.urgentBytes { urgentArrived.withLock { $0 = .now } }
                        } else if bytes.count == Self.bulkBytes {
                            bulkFinished.withLock { $0 += 1 }
                        }
                    }
                }
            }
        }
        defer { serving.cancel() }
        let connection = try await withTimeout(15, "connecting over the WAN") { try await client.connect(to: pair.serverAddress) }

        let bulk = [UInt8](repeating: UInt8(ascii: "B"), count: Self.bulkBytes)
        for _ in 0..<Self.bulkStreams {
            let stream = try await connection.openStream()
            try await stream.write(bulk)
            try await stream.finish()
        }
        // Let the bulk streams fill the link and its queue first.
        try await Task.sleep(for: .milliseconds(300))
        let urgent = try await connection.openStream()
        await urgent.prioritize()
        let sent = ContinuousClock.now
        try await urgent.write([UInt8](repeating: UInt8(ascii: "U"), count: Self.urgentBytes))
        try await urgent.finish()
        let arrival = try await withTimeout(20, "the urgent stream's bytes") {
            while true {
                if let at = urgentArrived.withLock({ $0 }) { return at }
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        let took = arrival - sent
        let bulkDoneFirst = bulkFinished.withLock { $0 }
        // Round-robin would need ~650 ms; the bound leaves room for a slow
        // machine but not for waiting behind the bulk bytes.
        #expect(took < .milliseconds(250), "the urgent 64 KiB took \(took) over \(kind)")
        #expect(bulkDoneFirst < Self.bulkStreams, "the bulk streams had all finished first: nothing to overtake")
        await client.close()
        await server.close()
    }

    /// `BulkQueueGate` in a live connection: with bbr, once start-up is
    /// over, bbr's window is about twice the path's bandwidth-delay product
    /// and the gate's limit about one, so bulk queued behind an urgent
    /// stream that keeps sending is held; the connection's statistics say
    /// for how long. With the gate off, or under cubic (no rate to hold
    /// bulk to), there is no gate and nothing to report.
    @Test("with bbr, bulk is held while an urgent stream sends, and the connection reports for how long",
          arguments: [(true, QUICConfiguration.CongestionControl.bbr), (false, .bbr), (true, .cubic)])
    func bulkQueueGateHolds(_ gateOn: Bool, _ controller: QUICConfiguration.CongestionControl) async throws {
        let link = WANLinkProfile.symmetric(rtt: .milliseconds(10), rateBitsPerSecond: 50_000_000, queueLimitBytes: 256 << 10)
        let emulator = try WANEmulator(aToB: link.forward, bToA: link.reverse)
        defer { emulator.shutdown() }
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try WANTransportPair(.quic, over: emulator, pki: pki) {
            $0.congestionControl = controller
            if !gateOn { $0.bulkQueueAllowance = nil }
        }
        let received = Locked(0)
        let serving = Task {
            guard let connection = await pair.server.accept() else { return }
            await withDiscardingTaskGroup { group in
                while let stream = try? await connection.acceptStream() {
                    group.addTask {
                        while let bytes = try? await stream.read(maxLength: 1 << 20), !bytes.isEmpty {
                            received.withLock { $0 += bytes.count }
                        }
                    }
                }
            }
        }
        defer { serving.cancel() }
        let connection = try await withTimeout(15, "connecting over the WAN") { try await pair.client.connect(to: pair.serverAddress) }
        // 24 MiB of bulk: about 4 s of this link, more than the test runs.
        let bulk = [UInt8](repeating: UInt8(ascii: "B"), count: Self.bulkBytes)
        for _ in 0..<Self.bulkStreams {
            let stream = try await connection.openStream()
            try await stream.write(bulk)
            try await stream.finish()
        }
        let urgent = try await connection.openStream()
        await urgent.prioritize()
        let answer = [UInt8](repeating: UInt8(ascii: "U"), count: 4096)
        for _ in 0..<150 {  // 1.5 s of 4 KiB answers every 10 ms
            try await urgent.write(answer)
            try await Task.sleep(for: .milliseconds(10))
        }
        let stats = await connection.statistics()
        let moved = received.withLock { $0 }
        #expect(moved > 2 << 20, "bulk and answers moved only \(moved) bytes in 1.5 s")
        if gateOn && controller == .bbr {
            let held = try #require(stats.bulkQueueHeld, "bbr with the gate on has a gate")
            #expect(held > .zero && held < .seconds(2), "bulk held for \(held) of about 1.5 s")
        } else {
            #expect(stats.bulkQueueHeld == nil)
        }
        await pair.client.close()
        await pair.server.close()
    }

    /// Bulk bytes the receiver has not read yet (on a lossy path: bytes
    /// held behind a lost packet) count against its connection window.
    /// Bulk streams leave part of that window to urgent ones, or an answer
    /// would wait until the receiver reads the bulk.
    @Test("an urgent stream's bytes get through while unread bulk bytes hold the connection's window",
          arguments: [TransportKind.quic, .tcp])
    func urgentPassesAHeldWindow(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = quicConfig(server: true)
        serverConfig.streamReceiveWindow = 1 << 20
        serverConfig.connectionReceiveWindow = 1 << 20
        let pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig, clientConfig: quicConfig(server: false))
        let (connection, serverSide) = try await pair.connect()
        let bulk = try await connection.openStream()
        try await bulk.write(patternBytes(count: 4 << 20, seed: 5))
        // The server takes the bulk stream and reads none of it.
        let heldBulk = try await withTimeout(10, "the bulk stream") { try await serverSide.acceptStream() }
        try await Task.sleep(for: .milliseconds(300))
        let urgent = try await connection.openStream()
        await urgent.prioritize()
        let answer = patternBytes(count: 64 << 10, seed: 6)
        try await urgent.write(answer)
        try await urgent.finish()
        // Polled, not awaited: without the reserve the urgent stream never
        // arrives, and accepting does not end until the connection does.
        let got = Locked<[UInt8]?>(nil)
        let reading = Task {
            let bytes = try await serverSide.acceptStream().readAll(limit: 1 << 20)
            got.withLock { $0 = bytes }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while got.withLock({ $0 }) != answer && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let arrived = got.withLock { $0 == answer }
        #expect(arrived, "the urgent stream's bytes waited behind a window of unread bulk")
        await heldBulk.reset(errorCode: 0)
        await pair.close()
        reading.cancel()
    }
}
