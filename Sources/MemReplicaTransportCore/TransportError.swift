import MemReplicaSystem
/// Every way a connection or stream can fail, each with a one-line message a
/// person can act on. The cases are distinct so callers (and tests) can tell
/// a trust problem from a network one without parsing text.
public enum TransportError: Error, Sendable, Equatable, CustomStringConvertible {
    /// We refused the peer's certificate (not signed by our CA, expired, ...).
    case untrustedPeer(reason: String)
    /// The peer refused our certificate.
    case rejectedByPeer(reason: String)
    /// A client tried to connect without presenting a certificate.
    case clientCertificateMissing
    /// The two sides share no application protocol (ALPN).
    case alpnMismatch(offered: [String])
    /// Packets came back but the TLS handshake did not finish in time.
    case handshakeTimeout(seconds: Double)
    /// Nothing answered at the address (no packet ever came back).
    case peerUnreachable(address: String, detail: String)
    /// Nothing from the peer for longer than the liveness timeout
    /// (`QUICConfiguration.livenessTimeout`), keep-alives unanswered.
    case idleTimeout(seconds: Double)
    /// The peer closed the connection.
    case peerClosed(errorCode: UInt64, reason: String)
    /// This side closed the connection.
    case closedLocally
    /// The connection broke without a close from the peer (a TCP reset, or
    /// the TCP stream ending without the transport's CLOSE).
    case connectionLost(detail: String)
    /// The local address is taken by another socket.
    case addressInUse(address: String)
    /// HOST:PORT could not be parsed or resolved.
    case badAddress(input: String, reason: String)
    /// The peer reset the stream with an application error code.
    case streamReset(errorCode: UInt64)
    /// A stream ended before the expected number of bytes arrived.
    case truncatedStream(expected: Int, received: Int)
    /// A peer sent more than an explicit limit allows.
    case messageTooLarge(limit: Int)
    /// Certificates or keys could not be loaded.
    case tlsConfiguration(String)
    /// Another TLS failure, with the alert the stack reported.
    case tlsFailure(String)
    /// A transport protocol failure: reported by the QUIC stack, or a
    /// violation of the TCP transport's record format.
    case protocolFailure(String)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// This side reset the stream: its peer let our buffers sit undrained
    /// for longer than `PeerLimits.stalledStreamTimeout`.
    case peerStalled(seconds: Double)
    /// The memory budget has no room for another connection's receive window.
    case memoryBudgetExhausted(limit: Int)

    public var description: String {
        switch self {
        case .untrustedPeer(let reason):
            return "untrusted peer: its certificate is not signed by our CA (\(reason))"
        case .rejectedByPeer(let reason):
            return "the peer refused our certificate (\(reason)); is it signed by the CA the peer trusts?"
        case .clientCertificateMissing:
            return "a client certificate is required (mutual TLS) but none was presented"
        case .alpnMismatch(let offered):
            return "no common application protocol: we offered \(offered.joined(separator: ", "))"
        case .handshakeTimeout(let s):
            return "TLS handshake did not complete within \(formatSeconds(s))"
        case .peerUnreachable(let address, let detail):
            return "peer \(address) is unreachable (\(detail))"
        case .idleTimeout(let s):
            return "nothing from the peer for \(formatSeconds(s)) (liveness timeout): it stopped answering"
        case .peerClosed(let code, let reason):
            return reason.isEmpty
                ? "peer closed the connection (code \(code))"
                : "peer closed the connection (code \(code)): \(reason)"
        case .closedLocally:
            return "connection was closed by this side"
        case .connectionLost(let detail):
            return "connection lost: \(detail)"
        case .addressInUse(let address):
            return "address \(address) is already in use"
        case .badAddress(let input, let reason):
            return "bad address '\(input)': \(reason) (expected HOST:PORT, [IPv6]:PORT or :PORT)"
        case .streamReset(let code):
            return "stream was reset by the peer (code \(code))"
        case .truncatedStream(let expected, let received):
            return "stream ended after \(received) of \(expected) bytes"
        case .messageTooLarge(let limit):
            return "peer sent more than the \(limit)-byte limit"
        case .tlsConfiguration(let detail):
            return "TLS configuration: \(detail)"
        case .tlsFailure(let detail):
            return "TLS handshake failed: \(detail)"
        case .protocolFailure(let detail):
            return "protocol error: \(detail)"
        case .system(let call, let errno):
            return "\(call) failed: \(String(cString: strerror(errno)))"
        case .memoryBudgetExhausted(let limit):
            return "the memory budget (\(limit >> 20) MiB) has no room for another connection; raise --memory-budget or close connections"
        case .peerStalled(let s):
            return "stream reset: the peer read nothing of what we sent for \(formatSeconds(s))"
        }
    }
}

private func formatSeconds(_ s: Double) -> String {
    s < 1 ? "\(Int((s * 1000).rounded())) ms" : String(format: "%.1f s", s)
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation

extension TransportError {
    /// Runs `body`, reporting a system layer's `SystemCallError` as
    /// `.system`, the way a transport's users see it.
    package static func mappingSystemErrors<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as SystemCallError {
            throw TransportError.system(call: error.call, errno: error.errno)
        }
    }
}
