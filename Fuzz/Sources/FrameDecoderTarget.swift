@testable import MemReplica
@testable import MemReplicaTransportCore

/// Wire protocol v1 frames (Protocol/FrameCodec.swift). For any bytes:
/// - decoding them whole and cut into pieces (sizes from the first byte)
///   gives the same frames and ends the same way;
/// - every decoded frame encodes to bytes that decode to it again;
/// - a refusal carries the code the header rules give when the header
///   decides it, else malformed_frame or frame_too_large;
/// - a PAGES payload decompresses (as a replica would, into exactly the
///   present pages' room) or is refused as malformed, never more.
struct FrameDecoderTarget: FuzzTarget {
    let compressor = PageCompressor()

    enum End: Equatable {
        case boundary, incomplete
        case violation(ProtocolErrorCode, offset: Int)
    }

    static func decode(_ bytes: [UInt8], piece: Int) -> (frames: [Frame], end: End) {
        var decoder = FrameDecoder()
        var frames: [Frame] = []
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + piece)
            decoder.append(Array(bytes[start..<end]))
            start = end
            do {
                while let frame = try decoder.next() { frames.append(frame) }
            } catch {
                return (frames, .violation(error.code, offset: start - decoder.pendingBytes))
            }
        }
        return (frames, decoder.atFrameBoundary ? .boundary : .incomplete)
    }

    mutating func run(_ input: [UInt8]) {
        let whole = Self.decode(input, piece: max(1, input.count))
        let piece = 1 + Int(input.first ?? 0) % 13
        let pieces = Self.decode(input, piece: piece)
        guard pieces.frames == whole.frames, pieces.end == whole.end else {
            fuzzFailure("decoding in \(piece)-byte pieces differs from decoding whole: \(pieces.end) vs \(whole.end)")
        }
        for frame in whole.frames {
            let bytes: [UInt8]
            do {
                bytes = try frame.encoded()
            } catch {
                fuzzFailure("a decoded \(frame.name) does not encode: \(error)")
            }
            let again = Self.decode(bytes, piece: bytes.count)
            guard again.frames == [frame], again.end == .boundary else {
                fuzzFailure("a decoded \(frame.name) does not survive encoding: \(again.end)")
            }
            if case .pages(let p) = frame {
                // Full pages: the room a replica gives them.
                let room = p.presentCount * PageLayout.pageSize
                let out = UnsafeMutableRawBufferPointer.allocate(byteCount: max(room, 1), alignment: 64)
                defer { out.deallocate() }
                do {
                    try p.payload.withUnsafeBytes { try compressor.decompress($0, with: p.codec, into: UnsafeMutableRawBufferPointer(rebasing: out[..<room])) }
                } catch let violation as ProtocolViolation where violation.code == .malformedFrame {
                    // Refused, as a replica refuses it.
                } catch {
                    fuzzFailure("decompressing a PAGES payload failed with \(error)")
                }
            }
        }
        if case .violation(let code, let offset) = whole.end {
            let allowed: Set<ProtocolErrorCode> = [.malformedFrame, .unknownFrameType, .frameTooLarge]
            guard allowed.contains(code) else { fuzzFailure("the decoder refused with \(code)") }
            var i = offset + 1
            if let length = VarInt.decode(input, at: &i) {
                let verdict: ProtocolErrorCode? = length > UInt64(FrameLimits.maxPayload) ? .frameTooLarge
                    : Frame.TypeCode(rawValue: input[offset]) == nil ? .unknownFrameType : nil
                if let verdict, verdict != code { fuzzFailure("header says \(verdict), the decoder \(code)") }
                if verdict == nil, code == .unknownFrameType { fuzzFailure("a known type refused as unknown") }
            }
        }
    }
}
