@testable import MemReplica
@testable import MemReplicaTransportCore
@testable import MemReplicaWAN
import Testing

/// Random valid frames of every type, from a seeded generator (a failure
/// names its seed, so it can be repeated).
struct FrameGenerator {
    var rng: WANRandom
    /// Whether a bulk frame may now and then be as large as a frame may be.
    var allowsLarge = true

    init(seed: UInt64, allowsLarge: Bool = true) {
        rng = WANRandom(seed: seed)
        self.allowsLarge = allowsLarge
    }

    static let allTypes: [Frame.TypeCode] = [.hello, .catalog, .subscribe, .have, .write, .dirty, .ack, .synced, .lanes, .lane, .lanesEnd,
                                             .read, .data, .digestRead, .digests, .echo, .error,
                                             .migrate, .migrateReady, .handover, .handedOver, .handoverCheck]

    /// Varints favouring the edges of each encoded length.
    mutating func varint() -> UInt64 {
        let edges: [UInt64] = [0, 1, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VarInt.max - 1, VarInt.max]
        switch rng.next() % 4 {
        case 0: return edges[Int(rng.next() % UInt64(edges.count))]
        case 1: return rng.next() % 64
        case 2: return rng.next() % (1 << 14)
        default: return rng.next() & VarInt.max
        }
    }

    /// A string of at most `limit` UTF-8 bytes mixing 1- to 4-byte scalars;
    /// now and then exactly at the limit.
    mutating func string(limit: Int) -> String {
        let budget = rng.next() % 4 == 0 ? limit : Int(rng.next() % UInt64(min(limit, 40) + 1))
        var scalars = String.UnicodeScalarView()
        var used = 0
        let samples: [Unicode.Scalar] = ["a", "Z", "-", "é", "ü", "€", "中", "😀", "\u{10FFFF}", "\u{0}"]
        while true {
            let s = samples[Int(rng.next() % UInt64(samples.count))]
            let n = String(s).utf8.count
            if used + n > budget {
                // Pad with one-byte scalars so the budget is met exactly.
                for _ in 0..<(budget - used) { scalars.append("x") }
                break
            }
            scalars.append(s)
            used += n
        }
        return String(scalars)
    }

    mutating func raw(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    mutating func bytes(max: Int) -> [UInt8] {
        if allowsLarge && rng.next() % 64 == 0 { return patternBytes(count: max, seed: rng.next()) }
        return (0..<Int(rng.next() % 600)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    mutating func frame(_ type: Frame.TypeCode) -> Frame {
        switch type {
        case .hello:
            return .hello(.init(protocolVersion: varint(), peerName: string(limit: FrameLimits.maxName), capabilities: varint()))
        case .catalog:
            let count = allowsLarge && rng.next() % 50 == 0 ? 200 : Int(rng.next() % 5)
            return .catalog((0..<count).map { _ in
                let allowed = rng.next() % 2 == 0 ? nil : (0...(rng.next() % 3)).map { _ in string(limit: FrameLimits.maxName) }
                return .init(name: string(limit: FrameLimits.maxName), size: varint(), chunkSize: varint(),
                             identity: RegionIdentity(id: string(limit: FrameLimits.maxRegionID), generation: varint()),
                             allowedPeers: allowed)
            })
        case .subscribe:
            let mode = Frame.Subscribe.Mode(rawValue: rng.next() % 5)!
            return .subscribe(.init(name: string(limit: FrameLimits.maxName), size: varint(), chunkSize: varint(),
                                    mode: mode, hashedChunks: varint(),
                                    hashKey: rng.next() % 2 == 0 ? [] : raw(ChunkHashKey.byteCount),
                                    knownRegionID: string(limit: FrameLimits.maxRegionID), knownGeneration: varint()))
        case .have:
            let count = allowsLarge && rng.next() % 200 == 0 ? FrameLimits.maxHashesPerFrame : Int(rng.next() % 40)
            return .have(firstChunk: varint(), hashes: (0..<count).map { _ in ChunkHash(high: rng.next(), low: rng.next()) })
        case .write:
            return .write(chunk: varint(), version: varint(), bytes: bytes(max: FrameLimits.maxPayload - 16))
        case .pages:
            let pages = 1 + Int(rng.next() % UInt64(FrameLimits.maxPagesPerChunk))
            let maskBytes = Frame.Pages.maskBytes(pages: pages)
            var present = [UInt8](repeating: 0, count: maskBytes), zero = present
            for i in 0..<pages {
                switch rng.next() % 3 {
                case 0: present[i >> 3] |= 1 << UInt8(i & 7)
                case 1: zero[i >> 3] |= 1 << UInt8(i & 7)
                default: break
                }
            }
            return .pages(.init(chunk: varint(), version: varint(), pageCount: pages, present: present, zero: zero,
                                codec: PageCodec(rawValue: UInt8(rng.next() % 3))!,
                                check: rng.next() % 2 == 0 ? nil : ChunkHash(high: rng.next(), low: rng.next()),
                                payload: bytes(max: FrameLimits.maxPayload - 128)))
        case .dirty:
            let count = allowsLarge && rng.next() % 200 == 0 ? FrameLimits.maxDirtyChunks : Int(rng.next() % 60)
            var chunks: [UInt64] = []
            var next = rng.next() % 3 == 0 ? 0 : varint() % (1 << 40)
            for _ in 0..<count {
                chunks.append(next)
                next += 1 + (rng.next() % 4 == 0 ? rng.next() % (1 << 20) : rng.next() % 3)
            }
            return .dirty(epoch: varint(), chunks: chunks)
        case .lanes:
            return .lanes(count: 2 + rng.next() % (FrameLimits.maxLanes - 1), token: raw(FrameLimits.laneTokenBytes))
        case .lane:
            return .lane(token: raw(FrameLimits.laneTokenBytes), index: 1 + rng.next() % (FrameLimits.maxLanes - 1))
        case .lanesEnd:
            return .lanesEnd(version: varint())
        case .ack:
            return .ack(version: varint())
        case .synced:
            return .synced(version: varint(), digest: rng.next() % 2 == 0 ? [] : raw(RegionDigest.byteCount))
        case .read:
            return .read(firstChunk: varint(), count: 1 + rng.next() % FrameLimits.maxReadChunks)
        case .data:
            return .data(firstChunk: varint(), bytes: bytes(max: FrameLimits.maxPayload - 8))
        case .digestRead:
            let group = UInt64(1) << (rng.next() % 21)
            return .digestRead(firstChunk: varint(), count: 1 + rng.next() % (group * UInt64(FrameLimits.maxDigestsPerFrame)), group: group)
        case .digests:
            let count = allowsLarge && rng.next() % 100 == 0 ? FrameLimits.maxDigestsPerFrame : Int(rng.next() % 20)
            return .digests(firstChunk: varint(), group: UInt64(1) << (rng.next() % 21), digests: raw(count * RegionDigest.byteCount))
        case .echo:
            return .echo(bytes(max: FrameLimits.maxPayload))
        case .error:
            return .error(code: varint(), message: string(limit: FrameLimits.maxMessage))
        case .migrate:
            return .migrate(.init(name: string(limit: FrameLimits.maxName), size: varint(), chunkSize: varint(),
                                  identity: RegionIdentity(id: string(limit: FrameLimits.maxRegionID), generation: varint()),
                                  mode: MigrationMode.allCases[Int(rng.next() % 3)], hashKey: raw(ChunkHashKey.byteCount),
                                  committing: varint(), sourcePort: rng.next() % 65536))
        case .migrateReady:
            return .migrateReady(generation: varint(), appliedVersion: varint(), holdsCopy: rng.next() % 2 == 0)
        case .handover:
            let postcopy = rng.next() % 3 == 0
            return .handover(generation: varint(), finalVersion: varint(), postcopy: postcopy,
                             digest: postcopy || rng.next() % 2 == 0 ? [] : raw(RegionDigest.byteCount))
        case .handoverCheck:
            return .handoverCheck(digest: raw(RegionDigest.byteCount))
        case .handedOver:
            return .handedOver(generation: varint())
        }
    }
}

/// What a decoder makes of a byte stream: the frames it returned, then why
/// it stopped.
struct DecodeOutcome: Equatable {
    enum End: Equatable {
        /// Every byte was used, ending on a frame boundary.
        case boundary
        /// A partial frame is buffered (the stream would need more bytes).
        case incomplete
        /// Refused, at `offset` (the start of the offending frame).
        case violation(ProtocolErrorCode, offset: Int)
    }
    var frames: [Frame] = []
    var end = End.boundary

    /// Decodes `bytes` appended in pieces cut at `cuts` (ascending offsets).
    static func of(_ bytes: [UInt8], cuts: [Int] = []) -> DecodeOutcome {
        var outcome = DecodeOutcome()
        var decoder = FrameDecoder()
        var start = 0
        for cut in cuts + [bytes.count] where cut >= start {
            decoder.append(Array(bytes[start..<cut]))
            start = cut
            do {
                while let frame = try decoder.next() { outcome.frames.append(frame) }
            } catch {
                // The decoder keeps the frame it refused pending.
                outcome.end = .violation(error.code, offset: start - decoder.pendingBytes)
                return outcome
            }
        }
        outcome.end = decoder.atFrameBoundary ? .boundary : .incomplete
        return outcome
    }
}

/// The header-level rules checked without the decoder: the code a frame
/// starting at `offset` must be refused with when its header alone decides
/// it, or nil when only its payload can.
func headerVerdict(_ bytes: [UInt8], at offset: Int) -> ProtocolErrorCode? {
    var i = offset + 1
    guard let length = VarInt.decode(bytes, at: &i) else { return nil }
    if length > UInt64(FrameLimits.maxPayload) { return .frameTooLarge }
    if Frame.TypeCode(rawValue: bytes[offset]) == nil { return .unknownFrameType }
    return nil
}

@Suite("Wire protocol codec: properties over random frames and mutations")
struct FrameCodecPropertyTests {
    @Test("random valid frames of every type round-trip, whole and cut at random places", arguments: 0..<4)
    func validFramesRoundTrip(seed: UInt64) throws {
        var gen = FrameGenerator(seed: 0xf4a3e + seed)
        for type in FrameGenerator.allTypes {
            for _ in 0..<60 {
                let frame = gen.frame(type)
                let bytes = try frame.encoded()
                #expect(bytes.first == type.rawValue)
                let whole = DecodeOutcome.of(bytes)
                #expect(whole == DecodeOutcome(frames: [frame], end: .boundary), "seed \(seed), \(frame.name)")
                let cuts = (0..<3).map { _ in Int(gen.rng.next() % UInt64(bytes.count + 1)) }.sorted()
                #expect(DecodeOutcome.of(bytes, cuts: cuts) == whole, "seed \(seed), \(frame.name), cuts \(cuts)")
            }
        }
    }

    @Test("an ERROR whose message fits the limit encodes whole; a longer one is cut at a character boundary")
    func errorMessageAtTheLimit() throws {
        // Old encoders cut every message to limit - 3 bytes: a peer's
        // 1024-byte message did not survive a re-encoding.
        let fits = String(repeating: "é", count: FrameLimits.maxMessage / 2)
        #expect(DecodeOutcome.of(try Frame.error(code: 1, message: fits).encoded()).frames == [.error(code: 1, message: fits)])
        let long = String(repeating: "x", count: FrameLimits.maxMessage - 1) + "€€"
        guard case .error(_, let message)? = DecodeOutcome.of(try Frame.error(code: 2, message: long).encoded()).frames.first else {
            Issue.record("no ERROR decoded")
            return
        }
        #expect(message == String(repeating: "x", count: FrameLimits.maxMessage - 1), "the euro sign does not fit whole")
    }

    /// One random mutation of a valid stream.
    private func mutate(_ input: [UInt8], _ rng: inout WANRandom) -> [UInt8] {
        var bytes = input
        let at = Int(rng.next() % UInt64(bytes.count))
        switch rng.next() % 9 {
        case 0: bytes[at] ^= UInt8(1) << (rng.next() % 8)
        case 1: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
        case 2: bytes.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
        case 3: bytes.remove(at: at)
        case 4: bytes.removeLast(Int(rng.next() % UInt64(bytes.count)))
        case 5: bytes[0] = UInt8(truncatingIfNeeded: rng.next())
        case 6:
            // A new length field: small, at the limit, just over it, or huge.
            let lengths: [UInt64] = [0, 1, rng.next() % 300, UInt64(FrameLimits.maxPayload), UInt64(FrameLimits.maxPayload + 1),
                                     rng.next() & VarInt.max]
            var i = 1
            guard VarInt.decode(bytes, at: &i) != nil else { break }
            var length: [UInt8] = []
            VarInt.encode(lengths[Int(rng.next() % UInt64(lengths.count))], into: &length)
            bytes.replaceSubrange(1..<i, with: length)
        case 7:
            // A field's byte set to a varint prefix of another length.
            bytes[at] = (bytes[at] & 0x3f) | UInt8(truncatingIfNeeded: rng.next() << 6)
        default:
            let n = Int(rng.next() % 16)
            bytes.insert(contentsOf: (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
        }
        return bytes
    }

    @Test("mutated frames decode to frames that re-encode to themselves, or are refused with the right code, never a crash",
          arguments: 0..<4)
    func mutationsDecodeOrAreRefused(seed: UInt64) throws {
        var gen = FrameGenerator(seed: 0x5eed + seed, allowsLarge: false)
        var rng = WANRandom(seed: 0xbad + seed)
        var counts: [String: Int] = [:]
        for round in 0..<3000 {
            // One or two frames, so a mutation can also straddle a boundary.
            var input = try gen.frame(FrameGenerator.allTypes[round % FrameGenerator.allTypes.count]).encoded()
            if rng.next() % 4 == 0 {
                input += try gen.frame(FrameGenerator.allTypes[Int(rng.next() % UInt64(FrameGenerator.allTypes.count))]).encoded()
            }
            var bytes = mutate(input, &rng)
            if rng.next() % 3 == 0, !bytes.isEmpty { bytes = mutate(bytes, &rng) }
            guard !bytes.isEmpty else { continue }

            let outcome = DecodeOutcome.of(bytes)
            for frame in outcome.frames {
                let again = DecodeOutcome.of(try frame.encoded())
                #expect(again == DecodeOutcome(frames: [frame], end: .boundary), "seed \(seed) round \(round): \(frame.name)")
            }
            switch outcome.end {
            case .boundary: counts["decoded", default: 0] += 1
            case .incomplete: counts["incomplete", default: 0] += 1
            case .violation(let code, let offset):
                counts["\(code)", default: 0] += 1
                if let verdict = headerVerdict(bytes, at: offset) {
                    #expect(code == verdict, "seed \(seed) round \(round): \(bytes.prefix(24))")
                } else {
                    // The header was fine: only the payload can be at fault.
                    #expect(code == .malformedFrame || code == .frameTooLarge, "seed \(seed) round \(round): \(code)")
                }
            }
            // However the bytes arrive, the decoder ends the same way.
            let cuts = (0..<2).map { _ in Int(rng.next() % UInt64(bytes.count + 1)) }.sorted()
            #expect(DecodeOutcome.of(bytes, cuts: cuts) == outcome, "seed \(seed) round \(round), cuts \(cuts)")
        }
        // Each outcome happened, so the mutations reach every branch.
        for outcome in ["decoded", "incomplete", "\(ProtocolErrorCode.malformedFrame)", "\(ProtocolErrorCode.unknownFrameType)",
                        "\(ProtocolErrorCode.frameTooLarge)"] {
            #expect(counts[outcome, default: 0] > 0, "no '\(outcome)' outcome in \(counts)")
        }
    }
}
