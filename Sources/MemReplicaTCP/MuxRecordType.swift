/// The TCP transport's own framing: QUIC gives every stream its own
/// ordered byte stream, one TLS byte stream does not, so memreplica's frames
/// travel inside mux records (docs/PROTOCOL.md, appendix A):
///
///     record = type:u8  stream:varint  length:varint  payload:length bytes
///
/// Connection-level records carry stream 0 (and stream 0 is also the
/// client's first stream: the type tells which is meant).
enum MuxRecordType: UInt8, CustomStringConvertible {
    /// First record each side sends on a TCP connection (see `MuxSettings`).
    case settings = 0x01
    /// Stream bytes; the first record for a new peer stream opens it.
    case data = 0x02
    /// The sender's half of the stream ends after the bytes before it.
    case fin = 0x03
    /// The sender abandons its half: payload `code`.
    case reset = 0x04
    /// The sender will read no more; the receiver should reset: payload `code`.
    case stopSending = 0x05
    /// Stream flow-control credit: payload `increment` (bytes).
    case streamWindow = 0x06
    /// Connection flow-control credit: payload `increment` (bytes).
    case connectionWindow = 0x07
    /// The peer may open `increment` more streams.
    case streamCredit = 0x08
    /// Keep-alive; answered with PONG carrying the same 8 bytes.
    case ping = 0x09
    case pong = 0x0a
    /// Ends the connection: `kind:u8` (0 application, 1 transport), `code`, `reason:string`.
    case close = 0x0b

    var isConnectionLevel: Bool {
        switch self {
        case .settings, .connectionWindow, .streamCredit, .ping, .pong, .close: return true
        case .data, .fin, .reset, .stopSending, .streamWindow: return false
        }
    }

    /// The largest payload a peer may send in a record of this type.
    var maxPayload: Int {
        switch self {
        case .data: return MuxLimits.maxDataPayload
        case .close: return MuxLimits.maxCloseReason + 32
        default: return MuxLimits.maxControlPayload
        }
    }

    var description: String {
        switch self {
        case .settings: return "SETTINGS"
        case .data: return "DATA"
        case .fin: return "FIN"
        case .reset: return "RESET"
        case .stopSending: return "STOP_SENDING"
        case .streamWindow: return "WINDOW"
        case .connectionWindow: return "CONNECTION_WINDOW"
        case .streamCredit: return "STREAM_CREDIT"
        case .ping: return "PING"
        case .pong: return "PONG"
        case .close: return "CLOSE"
        }
    }
}
