/// Application error codes memreplica puts in RESET_STREAM, STOP_SENDING and
/// CONNECTION_CLOSE frames (and in ERROR frames). Values are part of the wire
/// protocol (docs/PROTOCOL.md); never renumber.
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
    /// The subscriber has followed a newer generation of this region than
    /// the exporter's: a newer owner exists, this one must not act as primary.
    case staleGeneration = 0x15
    /// The region cannot be served: its bytes are not current or readable
    /// here (a replica not synced yet, a primary's file truncated under it).
    case regionUnavailable = 0x16
    /// A destination cannot take a region handed to it: it does not mirror
    /// it from the source, the mirror is not synced, or it cannot record
    /// the new generation (docs/MIGRATION.md).
    case migrationRefused = 0x17
    /// The destination's copy at the final version does not hash to the
    /// source's frozen region: nothing was committed.
    case handoverMismatch = 0x18
    /// The source gave up a migration (timeout, not converging, stopped).
    case migrationAborted = 0x19
    /// A stream whose peer read nothing of what was sent to it for
    /// `PeerLimits.stalledStreamTimeout`, or that would not take an ERROR
    /// within `FrameStream.failTimeout`: reset to free its buffers.
    case peerStalled = 0x30
    /// A connection over a per-peer cap (`PeerLimits`): too many from this
    /// certificate or this address.
    case tooManyConnections = 0x31
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
        case .staleGeneration: return "stale region generation"
        case .regionUnavailable: return "region unavailable"
        case .migrationRefused: return "migration refused"
        case .handoverMismatch: return "hand-over digest mismatch"
        case .migrationAborted: return "migration aborted"
        case .peerStalled: return "peer stopped reading"
        case .tooManyConnections: return "too many connections from this peer"
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
