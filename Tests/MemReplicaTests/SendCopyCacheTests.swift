@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import MemReplicaSystem
import Foundation
import Testing

@Suite("Send copies kept for reuse: bounded, by size class, empty when nothing is in flight")
struct SendCopyCacheTests {
    @Test("a freed copy serves the next copy of its size class and no larger one; the limit holds")
    func classesAndLimit() {
        let g = SendCopyCache.granule
        let cache = SendCopyCache(limit: 4 * g)
        let a = cache.take(g + 16)              // class of 2 granules
        let base = a.baseAddress
        #expect(a.count == g + 16)
        cache.give(a)
        #expect(cache.statistics.held == 2 * g)
        let larger = cache.take(2 * g + 1)      // needs 3 granules: not that block
        #expect(larger.baseAddress != base)
        let same = cache.take(2 * g)            // fits: the kept block
        #expect(same.baseAddress == base && same.count == 2 * g)
        #expect(cache.statistics.held == 0 && cache.statistics.reused == 1)

        // Full: a block past the limit is freed, not kept.
        cache.give(larger)                      // 3 granules
        cache.give(same)                        // 2 more would pass 4
        #expect(cache.statistics.held == 3 * g)
        // Small copies are malloc's: never kept.
        cache.give(cache.take(100))
        #expect(cache.statistics.held == 3 * g)
        cache.empty()
        #expect(cache.statistics.held == 0)
    }

    @Test("the budget empties the cache when its last send bytes are released, not before")
    func emptiedWhenIdle() {
        let budget = MemoryBudget(limit: 64 << 20)
        #expect(budget.tryReserve(3 * SendCopyCache.granule))
        budget.copies.give(budget.copies.take(SendCopyCache.granule))
        budget.release(SendCopyCache.granule)
        #expect(budget.copies.statistics.held == SendCopyCache.granule)
        budget.release(2 * SendCopyCache.granule)
        #expect(budget.copies.statistics.held == 0)
    }

    @Test("memory allocated elsewhere files under the class its real size serves")
    func foreignBlock() {
        let g = SendCopyCache.granule
        let cache = SendCopyCache(limit: 64 * g)
        // A frame's copy made by `OwnedBytes` (a loop's fault answer): 4
        // granules and a header; it can serve 4 granules, not 5.
        let frame = [UInt8](repeating: 7, count: 4 * g + 16).withUnsafeBytes(OwnedBytes.copy)
        let base = frame.baseAddress
        cache.give(frame)
        #expect(cache.take(4 * g + 16).baseAddress != base)
        #expect(cache.take(4 * g).baseAddress == base)
    }

    @Test("a bulk transfer gives its send copies back and keeps none once every byte is acknowledged",
          arguments: TransportKind.allCases)
    func reusedThenEmptied(_ kind: TransportKind) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var clientConfig = quicConfig(server: false)
        let budget = MemoryBudget(limit: 64 << 20)
        clientConfig.memoryBudget = budget
        let pair = try TransportPair(kind, pki: pki, serverConfig: quicConfig(server: true), clientConfig: clientConfig)
        async let accepted = pair.server.accept()
        let client = try await pair.client.connect(to: PeerAddress(host: "127.0.0.1", port: pair.server.localAddress.port))
        let server = try #require(await accepted)
        let stream = try await client.openStream()
        let block = patternBytes(count: 256 << 10, seed: 5)
        let writes = 64
        let writing = Task {
            for _ in 0..<writes { try await stream.write(block) }
            try await stream.finish()
        }
        let incoming = try await server.acceptStream()
        var received = 0
        var matches = true
        while let bytes = try await incoming.read(maxLength: 1 << 20) {
            for (i, b) in bytes.enumerated() where b != block[(received + i) % block.count] { matches = false; break }
            received += bytes.count
        }
        try await writing.value
        #expect(received == writes * block.count && matches)
        // Everything acknowledged: the budget holds nothing, nor the cache.
        try await pollUntil("the client's send copies settled", seconds: 10) { budget.sending == 0 }
        #expect(budget.copies.statistics.held == 0)
        // Every copy went back to the cache (whether a later write took it
        // again depends on timing: the cache empties whenever nothing is in
        // flight, which on loopback may be after any write).
        #expect(budget.copies.statistics.kept > 0, "no send copy was given back")
        await pair.close()
    }
}
