@testable import MemReplica
@testable import MemReplicaTCP
@testable import MemReplicaTransportCore

/// The TCP transport's records (TCP/MuxParser.swift, MuxSettings.swift,
/// MuxRecord*.swift, MuxClose.swift). For any bytes:
/// - parsing them whole and in pieces gives the same records, the same
///   DATA bytes per stream, and the same verdict;
/// - only `MuxViolation` is ever thrown;
/// - SETTINGS and CLOSE payloads that decode encode to payloads that decode
///   to the same value; a one-varint record's value is its only content.
struct MuxTarget: FuzzTarget {
    enum Event: Equatable {
        case data(stream: Int64, bytes: [UInt8])
        case record(UInt8, stream: Int64, payload: [UInt8])
    }

    struct Outcome: Equatable {
        var events: [Event] = []
        var violation: String?
        var atBoundary = true
    }

    static func parse(_ bytes: [UInt8], piece: Int) -> Outcome {
        var parser = MuxParser()
        var outcome = Outcome()
        var dataStream: Int64 = 0
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + piece)
            do {
                try bytes[start..<end].withUnsafeBytes { chunk in
                    try parser.consume(chunk) { event in
                        switch event {
                        case .dataHeader(let stream, let length):
                            dataStream = stream
                            if length == 0 { outcome.events.append(.data(stream: stream, bytes: [])) }
                        case .dataBytes(let bytes):
                            // Pieces of one record's DATA join into one event.
                            if case .data(let stream, let earlier)? = outcome.events.last, stream == dataStream {
                                outcome.events[outcome.events.count - 1] = .data(stream: stream, bytes: earlier + bytes)
                            } else {
                                outcome.events.append(.data(stream: dataStream, bytes: Array(bytes)))
                            }
                        case .record(let type, let stream, let payload):
                            outcome.events.append(.record(type.rawValue, stream: stream, payload: payload))
                        }
                    }
                }
            } catch let violation as MuxViolation {
                outcome.violation = violation.detail
                return outcome
            } catch {
                fuzzFailure("the mux parser threw \(type(of: error)): \(error)")
            }
            start = end
        }
        outcome.atBoundary = parser.atRecordBoundary
        return outcome
    }

    mutating func run(_ input: [UInt8]) {
        let whole = Self.parse(input, piece: max(1, input.count))
        let piece = 1 + Int(input.first ?? 0) % 11
        let pieces = Self.parse(input, piece: piece)
        // Two DATA records in a row for one stream join into one event
        // either way, so the event lists compare as they are.
        guard pieces == whole else { fuzzFailure("parsing in \(piece)-byte pieces differs from parsing whole") }
        for case .record(let raw, _, let payload) in whole.events {
            guard let type = MuxRecordType(rawValue: raw) else { fuzzFailure("a record of unknown type 0x\(raw) was handed on") }
            guard payload.count <= type.maxPayload else { fuzzFailure("\(type) payload of \(payload.count) bytes passed") }
            switch type {
            case .settings:
                guard let settings = try? MuxSettings(decoding: payload) else { continue }
                guard let again = try? MuxSettings(decoding: settings.encoded()), again == settings else {
                    fuzzFailure("SETTINGS does not survive encoding")
                }
            case .close:
                guard let close = try? MuxClose(decoding: payload) else { continue }
                guard let again = try? MuxClose(decoding: close.encoded()), again == close else {
                    fuzzFailure("CLOSE does not survive encoding")
                }
            case .reset, .stopSending, .streamWindow, .connectionWindow, .streamCredit:
                guard let value = try? MuxRecord.value(of: payload, in: type) else { continue }
                var minimal: [UInt8] = []
                VarInt.encode(value, into: &minimal)
                guard (try? MuxRecord.value(of: minimal, in: type)) == value else {
                    fuzzFailure("\(type) value \(value) does not survive encoding")
                }
            case .data, .fin, .ping, .pong:
                break
            }
        }
    }
}
