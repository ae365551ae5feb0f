/// Why a connection was ended by the mux layer; sent in a transport CLOSE.
enum MuxErrorCode: UInt64 {
    case protocolViolation = 1
    case flowControl = 2
    case streamLimit = 3
    case joinRefused = 4
    case linkLost = 5
    /// A per-peer cap (`PeerLimits`) refused the connection.
    case connectionLimit = 6
}

/// A peer broke the mux format or its limits.
struct MuxViolation: Error, CustomStringConvertible {
    let code: MuxErrorCode
    let detail: String

    init(_ detail: String) {
        self.init(.protocolViolation, detail)
    }

    init(_ code: MuxErrorCode, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    var description: String { "TCP mux: \(detail)" }
}
