@testable import MemReplica
import Foundation
import Testing

@Suite("Regions")
struct RegionTests {
    @Test("chunk geometry: power-of-two chunks ≥ 4 KiB, a short last chunk, ranges checked")
    func geometry() throws {
        let g = try RegionGeometry(size: 10 * 4096 + 100, chunkSize: 4096)
        #expect(g.chunkCount == 11)
        #expect(g.byteRange(ofChunk: 10) == 40960..<41060)
        #expect(g.byteRange(ofChunk: 11) == nil)
        #expect(g.byteRange(ofChunk: -1) == nil)
        #expect(throws: RegionGeometry.Invalid.chunkSize(3000)) { _ = try RegionGeometry(size: 1, chunkSize: 3000) }
        #expect(throws: RegionGeometry.Invalid.chunkSize(6144)) { _ = try RegionGeometry(size: 1, chunkSize: 6144) }
        #expect(throws: RegionGeometry.Invalid.size(0)) { _ = try RegionGeometry(size: 0, chunkSize: 4096) }
    }

    @Test("a memfd region stores and snapshots chunks; out-of-range and short writes are refused")
    func memfd() throws {
        let r = try Region(name: "m", backing: .memory, size: 3 * 65536, chunkSize: 65536)
        let data = patternBytes(count: 65536, seed: 5)
        try r.storeChunk(2, data)
        #expect(try r.copyChunk(2) == data)
        #expect(try r.copyChunk(0) == [UInt8](repeating: 0, count: 65536))
        #expect(throws: Region.Failure.self) { try r.storeChunk(3, data) }
        #expect(throws: Region.Failure.self) { try r.storeChunk(0, [1, 2, 3]) }
    }

    @Test("a file region is shared with other mappings of the file, and sizes are checked")
    func fileBacked() throws {
        let path = NSTemporaryDirectory() + "mr-region-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let a = try Region(name: "f", backing: .file(path: path), size: 8192, chunkSize: 4096)
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int == 8192)
        let b = try Region(name: "f", backing: .file(path: path), size: nil, chunkSize: 4096)
        #expect(b.geometry == a.geometry)
        try a.storeChunk(1, [UInt8](repeating: 0xab, count: 4096))
        #expect(try b.copyChunk(1) == [UInt8](repeating: 0xab, count: 4096))
        #expect(throws: Region.Failure.self) { _ = try Region(name: "f", backing: .file(path: path), size: 4096, chunkSize: 4096) }
        let empty = path + "-empty"
        defer { try? FileManager.default.removeItem(atPath: empty) }
        #expect(throws: Region.Failure.self) { _ = try Region(name: "e", backing: .file(path: empty), size: nil, chunkSize: 4096) }
    }

    @Test("the hash scanner reports exactly the chunks written since the last scan")
    func scanner() throws {
        let r = try Region(name: "s", backing: .memory, size: 64 * 4096 + 100, chunkSize: 4096)
        let scanner = ChunkHashScanner(region: r)
        #expect(try scanner.changedChunks().isEmpty)
        for offset in [0, 4095, 4096 * 7 + 13, 64 * 4096 + 99] { r.bytes[offset] ^= 0x01 }
        #expect(try scanner.changedChunks() == [0, 7, 64])
        #expect(try scanner.changedChunks().isEmpty)
        // Every byte position of a chunk, and of the short tail chunk, counts.
        for offset in stride(from: 4096 * 3, to: 4096 * 4, by: 1) where offset % 509 == 0 {
            r.bytes[offset] &+= 1
            #expect(try scanner.changedChunks() == [3])
        }
    }

    @Test("the chunk hash is GMAC (AES-128-GCM, NIST vector) and keyed: another key, another hash")
    func chunkHash() {
        // NIST GCM test case 1: zero key, zero IV, nothing authenticated.
        let zero = ChunkHasher(key: ChunkHashKey(bytes: [UInt8](repeating: 0, count: 16))!)
        #expect(zero.hash([]) == ChunkHash(high: 0x58e2_fcce_fa7e_3061, low: 0x367f_1d57_a4e7_455a))
        let bytes = patternBytes(count: 65536, seed: 3)
        let a = ChunkHasher(key: .random()), b = ChunkHasher(key: .random())
        #expect(a.hash(bytes) == a.hash(bytes))
        #expect(a.hash(bytes) != b.hash(bytes))
        // Every single-bit change, anywhere, changes the hash.
        var chunk = bytes
        let before = a.hash(chunk)
        var unchanged = 0
        for trial in 0..<2000 {
            let bit = (trial &* 2_654_435_761) % (chunk.count * 8)
            chunk[bit / 8] ^= UInt8(1 << (bit % 8))
            if a.hash(chunk) == before { unchanged += 1 }
            chunk[bit / 8] ^= UInt8(1 << (bit % 8))
        }
        #expect(unchanged == 0)
        #expect(a.hash(chunk) == before)
    }
}
