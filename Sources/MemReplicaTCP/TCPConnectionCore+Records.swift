import MemReplicaSystem
import MemReplicaTransportCore
import COpenSSL
import DequeModule

/// The mux records a connection's links deliver: DATA for a stream, the
/// stream and connection controls (credit, FIN, reset, stop, close).
extension TCPConnectionCore {
    /// The stream a DATA record is for, after checking both windows; nil
    /// drops the bytes.
    func dataStarts(stream id: Int64, length: Int, on link: TCPLink) throws -> TCPStreamCore? {
        guard connectionReceived + UInt64(length) <= connectionReceiveLimit else {
            throw MuxViolation(.flowControl, "the connection got more than its \(connectionReceiveLimit)-byte window")
        }
        connectionReceived += UInt64(length)
        guard let s = try stream(id, for: .data, on: link) else { return nil }
        try s.dataStarts(length: length)
        return s
    }

    func handle(_ type: MuxRecordType, stream id: Int64, payload: [UInt8], on link: TCPLink) throws {
        switch type {
        case .settings:
            throw MuxViolation("a second SETTINGS")
        case .data:
            break  // DATA comes as dataStarts + bytes
        case .fin:
            guard payload.isEmpty else { throw MuxViolation("FIN with a payload") }
            if let s = try stream(id, for: type, on: link) {
                try s.peerFin()
                streamMayBeDone(s)
            }
        case .reset:
            let code = try MuxRecord.value(of: payload, in: type)
            if let s = try stream(id, for: type, on: link) {
                s.peerReset(code: code)
                streamMayBeDone(s)
            }
        case .stopSending:
            let code = try MuxRecord.value(of: payload, in: type)
            if let s = try stream(id, for: type, on: link) {
                s.peerStopSending(code: code)
                streamMayBeDone(s)
            }
        case .streamWindow:
            let increment = try MuxRecord.value(of: payload, in: type)
            try stream(id, for: type, on: link)?.peerWindow(increment)
        case .connectionWindow:
            let increment = try MuxRecord.value(of: payload, in: type)
            guard increment <= VarInt.max - connectionSendLimit else {
                throw MuxViolation(.flowControl, "connection window beyond 2^62")
            }
            connectionSendLimit += increment
            let waiting = waitingForCredit
            waitingForCredit.removeAll()
            for s in waiting {
                s.waitingForConnectionCredit = false
                s.link.schedule(s)
            }
        case .streamCredit:
            let increment = try MuxRecord.value(of: payload, in: type)
            guard increment <= VarInt.max - localStreamLimit else { throw MuxViolation("stream credit beyond 2^62") }
            localStreamLimit += increment
            serveOpenWaiters()
        case .ping:
            guard payload.count == 8 else { throw MuxViolation("PING of \(payload.count) bytes (expected 8)") }
            link.queueControl(.pong, payload: payload)
        case .pong:
            guard payload.count == 8 else { throw MuxViolation("PONG of \(payload.count) bytes (expected 8)") }
        case .close:
            let close = try MuxClose(decoding: payload)
            if close.isApplication {
                finish(.peerClosed(errorCode: close.code, reason: close.reason))
            } else {
                finish(.protocolFailure("the peer closed with mux error \(close.code): \(close.reason)"))
            }
        }
    }
}
