/// Application error codes memreplica puts in RESET_STREAM, STOP_SENDING and
/// CONNECTION_CLOSE frames (and in ERROR frames). Values are part of wire
/// protocol v1 (docs/PROTOCOL.md); never renumber.
public enum ProtocolErrorCode: UInt64, Sendable, CaseIterable, CustomStringConvertible {
    case noError = 0x00
    /// A frame that does not parse: bad varint, field past the frame's end,
    /// bytes left over, a string that is not UTF-8.
    case malformedFrame = 0x01
    case unknownFrameType = 0x02
    /// A length field over the explicit limit for its frame type.
    case frameTooLarge = 0x03
    /// A frame that is valid but not allowed on this stream or at this point.
    case unexpectedFrame = 0x04
    case unsupportedVersion = 0x05
    case unknownRegion = 0x10
    /// Size or chunk size differ from the exporting side's region.
    case geometryMismatch = 0x11
    case chunkOutOfRange = 0x12
    /// A chunk version lower than one already applied.
    case versionWentBackwards = 0x13
    /// The peer's certificate identity is not on the region's allow list.
    case notAllowed = 0x14
    /// The region's backing failed under the primary (its file truncated,
    /// or a page its filesystem could not provide): it is not served any
    /// more; the message says why.
    case regionUnavailable = 0x1e
    case internalError = 0x3f

    public var description: String {
        switch self {
        case .noError: return "no error"
        case .malformedFrame: return "malformed frame"
        case .unknownFrameType: return "unknown frame type"
        case .frameTooLarge: return "frame too large"
        case .unexpectedFrame: return "unexpected frame"
        case .unsupportedVersion: return "unsupported protocol version"
        case .unknownRegion: return "unknown region"
        case .geometryMismatch: return "region size or chunk size mismatch"
        case .chunkOutOfRange: return "chunk index out of range"
        case .versionWentBackwards: return "chunk version went backwards"
        case .notAllowed: return "not allowed for this peer"
        case .regionUnavailable: return "region unavailable"
        case .internalError: return "internal error"
        }
    }
}

/// A protocol violation, with the code the stream or connection is ended with.
public struct ProtocolViolation: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: ProtocolErrorCode
    public let detail: String

    public init(_ code: ProtocolErrorCode, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code): \(detail)" }
}
