@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Crypto
import Foundation
import Testing

/// A server that answers every stream with the SHA-256 (hex) of all bytes
/// it read, so the sender can check integrity end to end.
private func serveHashes(_ conn: any TransportConnection) async {
    await withTaskGroup(of: Void.self) { group in
        while let stream = try? await conn.acceptStream() {
            group.addTask {
                var hasher = SHA256()
                var total = 0
                do {
                    while let part = try await stream.read(maxLength: 1 << 20) {
                        hasher.update(data: part)
                        total += part.count
                    }
                    let digest = hasher.finalize().map { String(format: "%02x", $0) }.joined()
                    try await stream.write(Array("\(total) \(digest)".utf8))
                    try await stream.finish()
                } catch {}
            }
        }
    }
}

/// Sends `blocks` blocks of `block` bytes on a new stream, each block
/// tagged with its index so reordering would change the hash; returns
/// (server's answer, expected answer).
private func sendAndHash(_ conn: any TransportConnection, block: [UInt8], blocks: Int, tag: UInt64) async throws -> (String, String) {
    let stream = try await conn.openStream()
    var hasher = SHA256()
    var chunk = block
    for i in 0..<blocks {
        withUnsafeBytes(of: (UInt64(i) << 16 | tag).littleEndian) { idx in
            for j in 0..<8 { chunk[j] = idx[j] }
        }
        hasher.update(data: chunk)
        try await stream.write(chunk)
    }
    try await stream.finish()
    let answer = String(decoding: try await stream.readAll(limit: 200), as: UTF8.self)
    let expected = "\(block.count * blocks) " + hasher.finalize().map { String(format: "%02x", $0) }.joined()
    return (answer, expected)
}

/// A client connection of `kind` to a server that answers each stream
/// with the hash of what it read (`serveHashes`), for `body`.
private func withHashingServer(_ kind: TransportKind,
                               _ body: (any TransportConnection) async throws -> Void) async throws {
    let pki = try TestPKI()
    defer { pki.remove() }
    let pair = try TransportPair(kind, pki: pki)
    let server = Task { if let c = await pair.server.accept() { await serveHashes(c) } }
    do {
        let conn = try await pair.client.connect(to: try pair.serverAddress)
        try await body(conn)
        await conn.close(errorCode: 0, reason: "")
    } catch {
        server.cancel()
        await pair.close()
        throw error
    }
    server.cancel()
    await pair.close()
}

/// Stream semantics every transport must keep: integrity, backpressure,
/// stream credit and resets.
@Suite("Transport streams", .serialized)
struct TransportStreamTests {
    @Test("64 concurrent streams of 4 MiB each arrive intact", arguments: TransportKind.allCases)
    func manyConcurrentStreams(_ kind: TransportKind) async throws {
        try await withHashingServer(kind) { conn in
            let block = patternBytes(count: 256 << 10, seed: 42)
            let results = try await withTimeout(240, "64 × 4 MiB") {
                try await withThrowingTaskGroup(of: (String, String).self) { group in
                    for s in 0..<64 {
                        group.addTask { try await sendAndHash(conn, block: block, blocks: 16, tag: UInt64(s)) }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
            }
            #expect(results.count == 64)
            for (got, want) in results { #expect(got == want) }
        }
    }

    @Test("one 1 GiB stream arrives intact", arguments: TransportKind.allCases)
    func oneHugeStream(_ kind: TransportKind) async throws {
        try await withHashingServer(kind) { conn in
            let block = patternBytes(count: 1 << 20, seed: 7)
            let (got, want) = try await withTimeout(600, "1 GiB stream") {
                try await sendAndHash(conn, block: block, blocks: 1024, tag: 1)
            }
            #expect(got == want)
        }
    }

    @Test("a stream reports its congestion controller's send rate once data flowed", arguments: TransportKind.allCases)
    func sendRate(_ kind: TransportKind) async throws {
        try await withHashingServer(kind) { conn in
            let stream = try await conn.openStream()
            let block = patternBytes(count: 1 << 20, seed: 5)
            for _ in 0..<8 { try await stream.write(block) }
            try await stream.finish()
            _ = try await stream.readAll(limit: 200)
            let rate = try #require(await stream.sendRate(), "no send rate after 8 MiB")
            // Loopback: at least what 8 MiB in a few seconds took, and finite.
            #expect(rate > 1e6 && rate.isFinite, "\(rate) bytes/s")
        }
    }

    @Test("10,000 short streams in sequence: stream credit is given back", arguments: TransportKind.allCases)
    func tenThousandStreams(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = quicConfig(server: true)
        serverConfig.maxConcurrentStreams = 16
        let pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig)
        let address = try pair.serverAddress
        let server = Task {
            guard let c = await pair.server.accept() else { return }
            while let s = try? await c.acceptStream() {
                let bytes = try await s.readAll(limit: 1024)
                try await s.write(bytes)
                try await s.finish()
            }
        }
        let conn = try await pair.client.connect(to: address)
        try await withTimeout(300, "10k streams") {
            for i in 0..<10_000 {
                let s = try await conn.openStream()
                let msg = Array("request \(i)".utf8)
                try await s.write(msg)
                try await s.finish()
                let echo = try await s.readAll(limit: 1024)
                if echo != msg { throw TransportError.protocolFailure("echo mismatch on stream \(i)") }
            }
        }
        await conn.close(errorCode: 0, reason: "")
        server.cancel()
        await pair.close()
    }

    @Test("a slow reader bounds the sender: write suspends instead of buffering", arguments: TransportKind.allCases)
    func backpressure(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var clientConfig = quicConfig(server: false)
        clientConfig.streamSendBuffer = 1 << 20
        var serverConfig = quicConfig(server: true)
        serverConfig.streamReceiveWindow = 1 << 20
        serverConfig.connectionReceiveWindow = 2 << 20
        let pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig, clientConfig: clientConfig)
        let (conn, serverSide) = try await pair.connect()
        let stream = try await conn.openStream()
        let chunk = patternBytes(count: 64 << 10, seed: 3)
        let acceptedBytes = Locked(0)
        // Nobody reads on the server yet: after the peer's window plus our
        // send buffer are full, write must suspend.
        let writer = Task {
            for _ in 0..<200 {
                try await stream.write(chunk)
                acceptedBytes.withLock { $0 += chunk.count }
            }
        }
        try await Task.sleep(for: .milliseconds(700))
        let early = acceptedBytes.withLock { $0 }
        #expect(early >= 1 << 20, "the writer should get at least its send buffer out")
        #expect(early <= (1 << 20) + (1 << 20) + chunk.count, "writer ran \(early) bytes ahead of a reader that reads nothing")
        let inbound = try await serverSide.acceptStream()
        let total = try await withTimeout(60, "drain") {
            var got = 0
            while got < 200 * chunk.count {
                guard let part = try await inbound.read(maxLength: 1 << 20) else { break }
                got += part.count
            }
            return got
        }
        #expect(total == 200 * chunk.count)
        try await writer.value as Void
        await pair.close()
    }

    @Test("a reset stream surfaces streamReset with the code on the other side", arguments: TransportKind.allCases)
    func resetStream(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try TransportPair(kind, pki: pki)
        let (conn, serverSide) = try await pair.connect()
        let stream = try await conn.openStream()
        try await stream.write([1, 2, 3])
        let inbound = try await serverSide.acceptStream()
        _ = try await inbound.read(maxLength: 3)
        await stream.reset(errorCode: 42)
        await #expect(throws: TransportError.streamReset(errorCode: 42)) {
            try await withTimeout(5, "reset") { _ = try await inbound.readAll(limit: 100) }
        }
        await pair.close()
    }

    /// 256 streams of 48 KiB each through a 256 KiB connection window (the
    /// transports that share one connection among streams): no
    /// stream reads as much as its own credit threshold (an eighth of its
    /// 4 MiB window), so the window reopens only through the connection's
    /// credit sweeps. A reader handed bytes on wake-up used to claim the
    /// sweep and drop it; no sweep ran after that, credit stayed stranded
    /// on the streams, and the window closed for good (1024 regions on one
    /// connection: hundreds of mirrors reset as stalled, never synced).
    @Test("many streams each reading less than their own credit threshold keep the connection's window open",
          arguments: [TransportKind.quic, .tcp])
    func smallStreamsKeepTheWindowOpen(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = quicConfig(server: true)
        serverConfig.peerLimits.stalledStreamTimeout = .seconds(10)
        var clientConfig = quicConfig(server: false)
        clientConfig.streamReceiveWindow = 4 << 20
        clientConfig.connectionReceiveWindow = 256 << 10
        let pair = try TransportPair(kind, pki: pki, serverConfig: serverConfig, clientConfig: clientConfig)
        let (client, server) = try await pair.connect()
        let answer = [UInt8](repeating: 0x5c, count: 48 << 10)
        let serving = Task {
            await withTaskGroup(of: Void.self) { group in
                while let stream = try? await server.acceptStream() {
                    group.addTask {
                        guard (try? await stream.readExactly(1)) != nil else { return }
                        try? await stream.write(answer)
                        try? await stream.finish()
                    }
                }
            }
        }
        let received = try await withTimeout(60, "256 streams of 48 KiB") {
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<256 {
                    group.addTask {
                        let stream = try await client.openStream()
                        try await stream.write([1])
                        try await stream.finish()
                        var total = 0
                        while let part = try await stream.read(maxLength: 4096) { total += part.count }
                        return total
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
        }
        #expect(received.count == 256 && received.allSatisfy { $0 == answer.count })
        await client.close(errorCode: 0, reason: "done")
        serving.cancel()
        await pair.close()
    }
}
