@testable import MemReplica
@testable import MemReplicaTransportCore
import Foundation
import Testing

@Suite("Wire protocol v1 codec")
struct FrameCodecTests {
    static let samples: [Frame] = [
        .hello(.init(peerName: "dc-east-1")),
        .catalog([.init(name: "cache", size: 1 << 30, chunkSize: 65536,
                        identity: RegionIdentity(id: "0123456789abcdef0123456789abcdef", generation: 42), allowedPeers: ["b", "c"]),
                  .init(name: "ü-région", size: 4096, chunkSize: 4096, identity: RegionIdentity(id: "x", generation: 1))]),
        .subscribe(.init(name: "cache", size: 1 << 30, chunkSize: 65536, mode: .lazy, hashedChunks: 16384,
                         hashKey: Array(repeating: 7, count: 16), knownRegionID: "0123", knownGeneration: 41)),
        .subscribe(.init(name: "cache", size: 1 << 30, chunkSize: 65536, mode: .verify)),
        .have(firstChunk: 3, hashes: [.none, ChunkHash(high: 1, low: 2), ChunkHash(high: .max, low: 0x0123_4567_89ab_cdef)]),
        .synced(version: 1 << 50),
        .synced(version: 3, digest: Array(repeating: 0xab, count: 32)),
        .digestRead(firstChunk: 5, count: 4096, group: 64),
        .digests(firstChunk: 5, group: 64, digests: Array(repeating: 1, count: 64 * 32)),
        .write(chunk: 7, version: 1 << 40, bytes: patternBytes(count: 65536, seed: 9)),
        .dirty(epoch: 3, chunks: [0, 1, 2, 900, 1 << 33]),
        .ack(version: 99),
        .lanes(count: 4, token: Array(0..<16)),
        .lane(token: Array(repeating: 0xfe, count: 16), index: 15),
        .lanesEnd(version: 1 << 45),
        .read(firstChunk: 12, count: 4),
        .data(firstChunk: 12, bytes: [1, 2, 3]),
        .error(code: ProtocolErrorCode.unknownRegion.rawValue, message: "no region 'x'"),
        .migrate(.init(name: "cache", size: 1 << 30, chunkSize: 65536,
                       identity: RegionIdentity(id: "0123456789abcdef0123456789abcdef", generation: 4), mode: .precopy,
                       hashKey: Array(repeating: 9, count: 16))),
        .migrate(.init(name: "cache", size: 4096, chunkSize: 4096, identity: RegionIdentity(id: "x", generation: 1),
                       mode: .hybrid, hashKey: Array(0..<16), committing: 2, sourcePort: 4433)),
        .migrateReady(generation: 4, appliedVersion: 1 << 33),
        .handover(generation: 5, finalVersion: 77, digest: Array(repeating: 0xcd, count: 32)),
        .handedOver(generation: 5),
        .handover(generation: 6, finalVersion: 1, digest: []),
        .migrateReady(generation: 0, appliedVersion: 0, holdsCopy: false),
        .handover(generation: 7, finalVersion: 9, postcopy: true, digest: []),
        .handoverCheck(digest: Array(repeating: 0x5a, count: 32)),
    ]

    @Test("every frame type survives encode → decode, whole and one byte at a time")
    func roundTrip() throws {
        var stream: [UInt8] = []
        for f in Self.samples { stream += try f.encoded() }
        var whole = FrameDecoder()
        whole.append(stream)
        var got: [Frame] = []
        while let f = try whole.next() { got.append(f) }
        #expect(got == Self.samples)
        #expect(whole.atFrameBoundary)

        var trickle = FrameDecoder()
        var trickled: [Frame] = []
        for b in stream {
            trickle.append([b])
            while let f = try trickle.next() { trickled.append(f) }
        }
        #expect(trickled == Self.samples)
    }

    @Test("a WRITE header followed by its bytes is the WRITE frame's encoding; oversize is refused")
    func writeHeader() throws {
        let bytes = patternBytes(count: 65536, seed: 4)
        let header = try Frame.writeHeader(chunk: 300, version: 1 << 35, byteCount: bytes.count)
        #expect(header + bytes == (try Frame.write(chunk: 300, version: 1 << 35, bytes: bytes).encoded()))
        #expect(throws: ProtocolViolation.self) {
            try Frame.writeHeader(chunk: 0, version: 1, byteCount: FrameLimits.maxPayload)
        }
    }

    @Test("decoding survives arrays adopted whole, split mid-frame and appended as slices")
    func adoptedArrays() throws {
        var stream: [UInt8] = []
        for f in Self.samples { stream += try f.encoded() }
        let cut = stream.count / 3
        var d = FrameDecoder()
        var got: [Frame] = []
        d.append(Array(stream[..<cut]))
        while let f = try d.next() { got.append(f) }
        d.append(stream[cut..<(2 * cut)])
        while let f = try d.next() { got.append(f) }
        d.append(Array(stream[(2 * cut)...]))
        while let f = try d.next() { got.append(f) }
        #expect(got == Self.samples)
        #expect(d.atFrameBoundary)
    }

    @Test("varints use the shortest form and round-trip at the edges")
    func varints() {
        for (value, length) in [(UInt64(0), 1), (63, 1), (64, 2), (16383, 2), (16384, 4), ((1 << 30) - 1, 4), (1 << 30, 8), (VarInt.max, 8)] {
            var out: [UInt8] = []
            VarInt.encode(value, into: &out)
            #expect(out.count == length)
            var offset = 0
            #expect(VarInt.decode(out, at: &offset) == value)
            #expect(offset == length)
        }
    }

    private func decodeError(_ bytes: [UInt8]) -> ProtocolViolation? {
        var d = FrameDecoder()
        d.append(bytes)
        do {
            _ = try d.next()
            return nil
        } catch {
            return error
        }
    }

    @Test("an oversize length is refused from the header alone")
    func oversize() {
        var header: [UInt8] = [0x10]
        VarInt.encode(UInt64(FrameLimits.maxPayload + 1), into: &header)
        #expect(decodeError(header)?.code == .frameTooLarge)
    }

    @Test("an unknown frame type is refused")
    func unknownType() {
        #expect(decodeError([0x77, 0x00])?.code == .unknownFrameType)
    }

    @Test("fields past the frame's end, stray bytes and bad UTF-8 are malformed")
    func malformed() throws {
        // ACK whose varint says 8 bytes but the frame holds 1.
        #expect(decodeError([0x12, 0x01, 0xc0])?.code == .malformedFrame)
        // ACK with a stray byte after the version.
        #expect(decodeError([0x12, 0x02, 0x05, 0x00])?.code == .malformedFrame)
        // HELLO whose name is not UTF-8.
        #expect(decodeError([0x01, 0x04, 0x01, 0x01, 0xff, 0x00])?.code == .malformedFrame)
        // A name longer than the limit.
        var hello: [UInt8] = [0x01]
        var payload: [UInt8] = [0x01]
        VarInt.encode(UInt64(FrameLimits.maxName + 1), into: &payload)
        payload += [UInt8](repeating: 0x61, count: FrameLimits.maxName + 1) + [0]
        VarInt.encode(UInt64(payload.count), into: &hello)
        #expect(decodeError(hello + payload)?.code == .frameTooLarge)
        // READ of zero chunks.
        #expect(decodeError([0x20, 0x02, 0x00, 0x00])?.code == .frameTooLarge)
        // Unknown subscribe mode.
        #expect(decodeError([0x03, 0x06, 0x01, 0x61, 0x01, 0x01, 0x07, 0x00])?.code == .malformedFrame)
        // HAVE whose hashes are not whole 8-byte values.
        #expect(decodeError([0x04, 0x04, 0x00, 0x01, 0x02, 0x03])?.code == .malformedFrame)
        // LANES of one stream, and of seventeen.
        let token = [UInt8](repeating: 1, count: FrameLimits.laneTokenBytes)
        #expect(decodeError([0x15, 17, 0x01] + token)?.code == .frameTooLarge)
        #expect(decodeError([0x15, 17, 0x11] + token)?.code == .frameTooLarge)
        // LANES whose token is short; LANE of index 0 (the region stream's).
        #expect(decodeError([0x15, 16, 0x04] + token.dropLast())?.code == .malformedFrame)
        #expect(decodeError([0x16, 17] + token + [0x00])?.code == .malformedFrame)
    }

    @Test("a partial frame waits for more bytes instead of failing")
    func partial() throws {
        let bytes = try Frame.write(chunk: 1, version: 2, bytes: [9, 9, 9]).encoded()
        var d = FrameDecoder()
        d.append(bytes.dropLast())
        #expect(try d.next() == nil)
        #expect(!d.atFrameBoundary)
        d.append([bytes.last!])
        #expect(try d.next() == .write(chunk: 1, version: 2, bytes: [9, 9, 9]))
    }

    @Test("the encoder refuses what a decoder must refuse")
    func encoderLimits() {
        #expect(throws: ProtocolViolation.self) {
            _ = try Frame.write(chunk: 0, version: 0, bytes: [UInt8](repeating: 0, count: FrameLimits.maxPayload)).encoded()
        }
        #expect(throws: ProtocolViolation.self) { _ = try Frame.dirty(epoch: 0, chunks: [5, 5]).encoded() }
        #expect(throws: ProtocolViolation.self) { _ = try Frame.read(firstChunk: 0, count: 0).encoded() }
        #expect(throws: ProtocolViolation.self) { _ = try Frame.lanes(count: 17, token: Array(0..<16)).encoded() }
        #expect(throws: ProtocolViolation.self) { _ = try Frame.lane(token: Array(0..<15), index: 1).encoded() }
    }
}
