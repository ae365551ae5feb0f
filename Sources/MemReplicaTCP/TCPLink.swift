import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import COpenSSL
import DequeModule
#if canImport(Glibc)
import Glibc
#endif

/// One TCP connection and its TLS session, driven by the endpoint's loop
/// thread only: non-blocking connect, the TLS handshake, SSL_read into the
/// mux parser, and SSL_write from a staging buffer that control records and
/// the DATA of its streams (round-robin, one record each per turn) are
/// framed into. OpenSSL asks to be called again with the same bytes after
/// WANT_WRITE, so staged bytes stay put until SSL_write has taken them.
final class TCPLink {
    enum State: Equatable { case connecting, handshaking, awaitingSettings, open, draining, closed }
    enum Role: Equatable {
        /// Carries SETTINGS, connection-level records and multiplexed streams.
        case session
        /// Carries one stream of a logical connection (`tcp-per-region`).
        case join(stream: Int64)
        /// Server side, before the client's SETTINGS said which.
        case unassigned
    }

    /// The link's key in the endpoint's epoll set and tables.
    let token: UInt64
    let endpoint: TCPEndpoint
    let fd: Int32
    let ssl: OpaquePointer
    let isClient: Bool
    let remoteAddress: PeerAddress
    var connection: TCPConnectionCore?
    var role: Role
    private(set) var state: State
    let startedAt: UInt64
    private var drainDeadline = UInt64.max
    private(set) var peerIdentity = PeerIdentity.none

    private var parser = MuxParser()
    private var dataTarget: TCPStreamCore?
    var control: [UInt8] = []
    var sendStreams = SendScheduler<TCPStreamCore>()
    var staging: UnsafeMutableRawBufferPointer?
    var stagingStart = 0
    var stagingEnd = 0
    /// In the endpoint's queue of links to flush.
    var queuedForWrite = false
    /// Server: the source host the endpoint counted this link under
    /// (`ConnectionAdmission`), and whether it still counts as half-open.
    var admittedHost: String?
    var countedHalfOpen = false
    private var interest: UInt32 = 0
    var shutdownSent = false
    /// TCP_INFO taken just before the socket closed.
    private(set) var finalInfo: TCPInfo?
    static let stagingSize = 256 << 10
    /// Bytes one flush may write before other links get their turn.
    static let flushBudget = 1 << 20

    init(endpoint: TCPEndpoint, token: UInt64, fd: Int32, ssl: OpaquePointer, isClient: Bool,
         remoteAddress: PeerAddress, role: Role, state: State) {
        self.endpoint = endpoint
        self.token = token
        self.fd = fd
        self.ssl = ssl
        self.isClient = isClient
        self.remoteAddress = remoteAddress
        self.role = role
        self.state = state
        startedAt = monotonicNanoseconds()
        interest = state == .connecting ? EPOLLOUT.rawValue : EPOLLIN.rawValue
        // OpenSSL's callbacks (session tickets) find the link here; the SSL
        // object is freed before the link.
        SSL_set_ex_data(ssl, 0, Unmanaged.passUnretained(self).toOpaque())
    }

    var epollEvents: UInt32 { interest }
    var isClosed: Bool { state == .closed }
    var currentInfo: TCPInfo? { state == .closed ? finalInfo : TCPInfo(fd: fd) }

    /// OpenSSL got a session ticket (client links): keep it for joins.
    func storeSession(_ session: OpaquePointer) -> Bool {
        connection?.storeSession(session) ?? false
    }

    // MARK: events

    func handle(events: UInt32) {
        switch state {
        case .closed:
            return
        case .connecting:
            let e = TCPSocket.pendingError(fd)
            if e == EINPROGRESS || e == EALREADY { return }
            guard e == 0 else {
                fail(TCPSocket.connectError(e, remote: remoteAddress))
                return
            }
            state = .handshaking
            advanceHandshake()
        case .handshaking:
            advanceHandshake()
        case .awaitingSettings, .open, .draining:
            if events & EPOLLOUT.rawValue != 0 { flush() }
            if events & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 { readAvailable() }
            // A write that waited for a read (TLS key update) goes on now.
            if stagingStart < stagingEnd { endpoint.needsWrite(self) }
        }
    }

    func setInterest(out: Bool) {
        let wanted = EPOLLIN.rawValue | (out ? EPOLLOUT.rawValue : 0)
        guard wanted != interest, state != .closed else { return }
        interest = wanted
        endpoint.updateInterest(self)
    }

    private func advanceHandshake() {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            handshakeDone()
            return
        }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ: setInterest(out: false)
        case SSL_ERROR_WANT_WRITE: setInterest(out: true)
        default: fail(OpenSSLFailure.error(of: ssl, during: "the TLS handshake", offered: endpoint.configuration.applicationProtocols))
        }
    }

    private func handshakeDone() {
        let protocols = endpoint.configuration.applicationProtocols
        var selected: UnsafePointer<UInt8>?
        var selectedLength: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &selected, &selectedLength)
        let alpn = selected.map { String(decoding: UnsafeBufferPointer(start: $0, count: Int(selectedLength)), as: UTF8.self) }
        guard let alpn, protocols.contains(alpn) else {
            fail(.alpnMismatch(offered: protocols))
            return
        }
        guard let cert = SSL_get0_peer_certificate(ssl), let identity = OpenSSLContext.identity(of: cert) else {
            fail(isClient ? .untrustedPeer(reason: "the server sent no certificate") : .clientCertificateMissing)
            return
        }
        peerIdentity = identity
        if isClient, let connection {
            switch role {
            case .session:
                connection.peerIdentity = identity
                queueRecord(.settings, payload: connection.localSettings().encoded())
                state = .awaitingSettings
            case .join(let stream):
                guard identity.fingerprint == connection.peerIdentity.fingerprint else {
                    fail(.untrustedPeer(reason: "a joining TCP connection reached a server with another certificate"))
                    return
                }
                queueRecord(.settings, payload: connection.localSettings(role: .join, token: connection.token,
                                                                         joinStream: stream).encoded())
                endpoint.logger.trace("stream TCP connection up", metadata: [
                    "peer": "\(remoteAddress)", "stream": "\(stream)", "tls-resumed": "\(SSL_session_reused(ssl) == 1)",
                ])
                state = .open
                for s in connection.streams.values where s.link === self { schedule(s) }
            case .unassigned:
                break
            }
        } else {
            state = .awaitingSettings
        }
        setInterest(out: false)
        endpoint.needsWrite(self)
        readAvailable()
    }

    // MARK: reading

    func readAvailable() {
        let buffer = endpoint.receiveBuffer
        var rounds = 0
        while rounds < 64 {
            guard state == .awaitingSettings || state == .open || state == .draining else { return }
            ERR_clear_error()
            let n = SSL_read(ssl, buffer.baseAddress, Int32(buffer.count))
            if n > 0 {
                rounds += 1
                connection?.lastReceivedAt = endpoint.now
                guard state != .draining else { continue }  // read only to reach the end
                do {
                    try parser.consume(UnsafeRawBufferPointer(rebasing: buffer[0..<Int(n)])) { try receive($0) }
                } catch let violation as MuxViolation {
                    refuse(violation)
                } catch {
                    fail(error as? TransportError ?? .protocolFailure("\(error)"))
                }
                continue
            }
            let error = SSL_get_error(ssl, n)
            switch error {
            case SSL_ERROR_WANT_READ:
                return
            case SSL_ERROR_WANT_WRITE:
                setInterest(out: true)
                return
            case SSL_ERROR_ZERO_RETURN:
                peerEnded("the peer ended TLS without a CLOSE record")
                return
            case SSL_ERROR_SYSCALL:
                let e = errno
                peerEnded(e == 0 ? "the peer ended the TCP connection without a CLOSE record" : String(cString: strerror(e)))
                return
            default:
                let failure = OpenSSLFailure.error(of: ssl, during: "reading", offered: endpoint.configuration.applicationProtocols)
                if case .connectionLost(let detail) = failure { peerEnded(detail) } else { fail(failure) }
                return
            }
        }
        endpoint.readAgain(self)
    }

    private func receive(_ event: MuxParser.Event) throws {
        switch state {
        case .open:
            guard let connection else { return }
            switch event {
            case .dataHeader(let stream, let length):
                dataTarget = try connection.dataStarts(stream: stream, length: length, on: self)
            case .dataBytes(let bytes):
                dataTarget?.deliver(bytes)
            case .record(let type, let stream, let payload):
                try connection.handle(type, stream: stream, payload: payload, on: self)
            }
        case .awaitingSettings:
            guard case .record(let type, _, let payload) = event else {
                throw MuxViolation("the first record must be SETTINGS, not DATA")
            }
            if type == .close, let connection {
                try connection.handle(type, stream: 0, payload: payload, on: self)
                return
            }
            guard type == .settings else { throw MuxViolation("the first record must be SETTINGS, not \(type)") }
            let settings = try MuxSettings(decoding: payload)
            if isClient {
                try connection?.serverSettingsArrived(settings)
            } else {
                try endpoint.adopt(self, settings: settings)
            }
            if state == .awaitingSettings { state = .open }
            endpoint.needsWrite(self)
        default:
            return
        }
    }

    /// EOF or an error from the socket.
    private func peerEnded(_ detail: String) {
        if state == .draining || connection == nil {
            closeNow()
        } else {
            fail(.connectionLost(detail: detail))
        }
    }

    // MARK: ending

    /// Ends the link gracefully: the optional CLOSE record and whatever is
    /// staged go out, then TLS close_notify and a TCP FIN; the socket is
    /// closed once the peer's end arrives (or after `drainTimeout`).
    func beginDrain(closing record: [UInt8]?) {
        switch state {
        case .closed, .draining: return
        case .connecting, .handshaking:
            closeNow()
            return
        case .awaitingSettings, .open:
            break
        }
        if let record { control.append(contentsOf: record) }
        state = .draining
        drainDeadline = monotonicNanoseconds() + TCPConfiguration.drainTimeout.saturatingNanoseconds
        sendStreams.removeAll()
        endpoint.needsWrite(self)
    }

    func sendShutdown() {
        ERR_clear_error()
        let rc = SSL_shutdown(ssl)
        if rc < 0 && SSL_get_error(ssl, rc) == SSL_ERROR_WANT_WRITE {
            setInterest(out: true)
            return
        }
        shutdownSent = true
        Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    /// A broken link ends its whole logical connection.
    func fail(_ error: TransportError) {
        guard state != .closed else { return }
        closeNow()
        if let connection {
            connection.finish(error, telling: MuxClose(isApplication: false, code: MuxErrorCode.linkLost.rawValue,
                                                       reason: "a TCP connection of this connection failed: \(error)"))
        } else {
            endpoint.logger.debug("inbound TCP connection failed", metadata: ["peer": "\(remoteAddress)", "error": "\(error)"])
        }
    }

    /// The peer broke the mux rules: tell it why and end.
    func refuse(_ violation: MuxViolation) {
        guard state != .closed, state != .draining else { return }
        let close = MuxClose(isApplication: false, code: violation.code.rawValue, reason: violation.detail)
        if let connection, !connection.isClosed {
            connection.finish(.protocolFailure(violation.description), telling: close)
        } else {
            endpoint.logger.info("refused an inbound TCP connection: \(violation)", metadata: ["peer": "\(remoteAddress)"])
            var record: [UInt8] = []
            MuxRecord.append(.close, payload: close.encoded(), to: &record)
            beginDrain(closing: record)
        }
    }

    /// Marks the link closed; the endpoint frees the socket and TLS session
    /// at the end of the loop turn (never inside an OpenSSL call).
    func closeNow() {
        guard state != .closed else { return }
        finalInfo = TCPInfo(fd: fd)
        state = .closed
        sendStreams.removeAll()
        control.removeAll()
        endpoint.retire(self)
    }

    /// Frees what the link holds (loop thread, outside OpenSSL calls).
    func release() {
        staging?.deallocate()
        staging = nil
        SSL_free(ssl)
        Glibc.close(fd)
    }

    // MARK: timers

    var deadline: UInt64 {
        switch state {
        case .connecting, .handshaking, .awaitingSettings:
            return startedAt + endpoint.configuration.handshakeTimeout.saturatingNanoseconds
        case .draining:
            return drainDeadline
        case .open, .closed:
            return UInt64.max
        }
    }

    func expire() {
        let timeout = endpoint.configuration.handshakeTimeout.seconds
        switch state {
        case .connecting:
            fail(.peerUnreachable(address: remoteAddress.description, detail: "no answer within \(Int(timeout)) s"))
        case .handshaking, .awaitingSettings:
            fail(.handshakeTimeout(seconds: timeout))
        case .draining:
            closeNow()
        case .open, .closed:
            break
        }
    }
}
