@testable import MemReplica
@testable import MemReplicaTCP
@testable import MemReplicaTransportCore
import Testing

@Suite("TCP mux records")
struct MuxRecordTests {
    /// Records as the parser reports them, DATA bytes joined per record.
    private func parse(_ bytes: [UInt8], chunks: [Int]) throws -> [(MuxRecordType, Int64, [UInt8])] {
        var parser = MuxParser()
        var out: [(MuxRecordType, Int64, [UInt8])] = []
        var offset = 0
        var i = 0
        while offset < bytes.count {
            let n = min(chunks[i % chunks.count], bytes.count - offset)
            i += 1
            try bytes[offset..<offset + n].withUnsafeBytes { raw in
                try parser.consume(raw) { event in
                    switch event {
                    case .dataHeader(let stream, _): out.append((.data, stream, []))
                    case .dataBytes(let b): out[out.count - 1].2 += b
                    case .record(let type, let stream, let payload): out.append((type, stream, payload))
                    }
                }
            }
            offset += n
        }
        #expect(parser.atRecordBoundary)
        return out
    }

    @Test("records survive any split across reads", arguments: [[1], [2, 7], [17, 1, 3], [4096], [65536]])
    func anySplit(_ chunks: [Int]) throws {
        let settings = MuxSettings(role: .join, streamWindow: 1 << 20, connectionWindow: 1 << 26, maxStreams: 256,
                                   token: Array(0..<16), joinStream: 40)
        let data = patternBytes(count: 70_000, seed: 3)
        var bytes: [UInt8] = []
        MuxRecord.append(.settings, payload: settings.encoded(), to: &bytes)
        MuxRecord.append(.data, stream: 40, payload: data, to: &bytes)
        MuxRecord.append(.data, stream: 1 << 40, payload: [], to: &bytes)
        MuxRecord.append(.fin, stream: 40, to: &bytes)
        MuxRecord.append(.streamWindow, stream: 40, value: 1 << 33, to: &bytes)
        MuxRecord.append(.close, payload: MuxClose(isApplication: true, code: 7, reason: "ünïcode").encoded(), to: &bytes)
        let records = try parse(bytes, chunks: chunks)
        #expect(records.map(\.0) == [.settings, .data, .data, .fin, .streamWindow, .close])
        #expect(try MuxSettings(decoding: records[0].2) == settings)
        #expect(records[1].1 == 40 && records[1].2 == data)
        #expect(records[2].1 == 1 << 40 && records[2].2.isEmpty)
        #expect(try MuxRecord.value(of: records[4].2, in: .streamWindow) == 1 << 33)
        #expect(try MuxClose(decoding: records[5].2) == MuxClose(isApplication: true, code: 7, reason: "ünïcode"))
    }

    @Test("lengths over their limit are refused from the header alone")
    func limits() {
        var oversize: [UInt8] = [MuxRecordType.data.rawValue, 0]
        VarInt.encode(UInt64(MuxLimits.maxDataPayload + 1), into: &oversize)
        #expect(throws: MuxViolation.self) { _ = try parse(oversize, chunks: [1]) }
        var bigPing: [UInt8] = [MuxRecordType.ping.rawValue, 0]
        VarInt.encode(UInt64(MuxLimits.maxControlPayload + 1), into: &bigPing)
        #expect(throws: MuxViolation.self) { _ = try parse(bigPing, chunks: [64]) }
        #expect(throws: MuxViolation.self) { _ = try parse([0xee, 0, 0], chunks: [3]) }
        // Connection-level records name no stream.
        #expect(throws: MuxViolation.self) { _ = try parse([MuxRecordType.ping.rawValue, 4, 0], chunks: [3]) }
    }

    @Test("SETTINGS and CLOSE payloads are checked field by field")
    func payloads() throws {
        let good = MuxSettings(role: .connection, streamWindow: 1, connectionWindow: 2, maxStreams: 3).encoded()
        #expect(throws: MuxViolation.self) { _ = try MuxSettings(decoding: Array(good.dropLast())) }
        #expect(throws: MuxViolation.self) { _ = try MuxSettings(decoding: good + [0]) }
        var badToken = good
        badToken[badToken.count - 1] = 5  // a 5-byte token that is not there
        #expect(throws: MuxViolation.self) { _ = try MuxSettings(decoding: badToken) }
        #expect(throws: MuxViolation.self) { _ = try MuxClose(decoding: [2, 0, 0]) }
        #expect(throws: MuxViolation.self) { _ = try MuxClose(decoding: [0, 0, 2, 0xff, 0xfe]) }
        let long = MuxClose(isApplication: false, code: 1, reason: String(repeating: "é", count: 2000)).encoded()
        #expect(try MuxClose(decoding: long).reason.utf8.count <= MuxLimits.maxCloseReason)
    }
}
