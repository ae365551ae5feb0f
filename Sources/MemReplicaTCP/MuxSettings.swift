import MemReplicaTransportCore
/// The first record each side sends on every TCP connection:
///
///     version  role  stream_window  connection_window  max_streams  token:bytes  [join_stream]
///
/// A client starts a new logical connection (role 0, empty token) and the
/// server answers with the connection's token; with one TCP connection per
/// stream, each further TCP connection joins that logical connection
/// (role 1, the token, and the stream it carries). The server sends no
/// SETTINGS on a joining connection.
struct MuxSettings: Equatable {
    static let version: UInt64 = 1

    enum Role: UInt64 {
        case connection = 0
        case join = 1
    }

    var role: Role
    var streamWindow: UInt64
    var connectionWindow: UInt64
    var maxStreams: UInt64
    var token: [UInt8] = []
    var joinStream: Int64?

    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        for v in [Self.version, role.rawValue, streamWindow, connectionWindow, maxStreams, UInt64(token.count)] {
            VarInt.encode(min(v, VarInt.max), into: &out)
        }
        out.append(contentsOf: token)
        if let joinStream { VarInt.encode(UInt64(joinStream), into: &out) }
        return out
    }

    init(role: Role, streamWindow: UInt64, connectionWindow: UInt64, maxStreams: UInt64,
         token: [UInt8] = [], joinStream: Int64? = nil) {
        self.role = role
        self.streamWindow = streamWindow
        self.connectionWindow = connectionWindow
        self.maxStreams = maxStreams
        self.token = token
        self.joinStream = joinStream
    }

    init(decoding payload: [UInt8]) throws {
        var offset = 0
        func next(_ what: String) throws -> UInt64 {
            guard let v = VarInt.decode(payload, at: &offset) else { throw MuxViolation("SETTINGS ends inside \(what)") }
            return v
        }
        let version = try next("the version")
        guard version == Self.version else {
            throw MuxViolation("the peer speaks mux version \(version), this side \(Self.version)")
        }
        let roleValue = try next("the role")
        guard let role = Role(rawValue: roleValue) else { throw MuxViolation("SETTINGS with unknown role \(roleValue)") }
        self.role = role
        streamWindow = try next("the stream window")
        connectionWindow = try next("the connection window")
        maxStreams = try next("the stream limit")
        let tokenLength = try next("the token")
        guard tokenLength == 0 || tokenLength == UInt64(MuxLimits.tokenLength),
              offset + Int(tokenLength) <= payload.count else {
            throw MuxViolation("SETTINGS token of \(tokenLength) bytes (expected 0 or \(MuxLimits.tokenLength))")
        }
        token = Array(payload[offset..<offset + Int(tokenLength)])
        offset += Int(tokenLength)
        if role == .join {
            guard !token.isEmpty else { throw MuxViolation("a joining SETTINGS without a token") }
            joinStream = Int64(try next("the joining stream"))
        }
        guard offset == payload.count else { throw MuxViolation("SETTINGS with \(payload.count - offset) bytes left over") }
    }
}
