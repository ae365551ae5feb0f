/// Ways a ping fails after the connection is up.
enum PingError: Error, CustomStringConvertible {
    case mismatch(seq: Int, sent: Int, received: Int, firstDifference: Int)
    case timeout(seq: Int, seconds: Double)

    var description: String {
        switch self {
        case .mismatch(let seq, let sent, let received, let at):
            return "echo mismatch on round trip \(seq): sent \(sent) bytes, got \(received) back, first difference at byte \(at)"
        case .timeout(let seq, let seconds):
            return "no echo for round trip \(seq) within \(Format.seconds(seconds))"
        }
    }
}
