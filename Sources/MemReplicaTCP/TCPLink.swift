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
    private var control: [UInt8] = []
    private var sendStreams = SendScheduler<TCPStreamCore>()
    private var staging: UnsafeMutableRawBufferPointer?
    private var stagingStart = 0
    private var stagingEnd = 0
    /// In the endpoint's queue of links to flush.
    var queuedForWrite = false
    /// Server: the source host the endpoint counted this link under
    /// (`ConnectionAdmission`), and whether it still counts as half-open.
    var admittedHost: String?
    var countedHalfOpen = false
    private var interest: UInt32 = 0
    private var shutdownSent = false
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

    private func setInterest(out: Bool) {
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

    // MARK: writing

    func schedule(_ stream: TCPStreamCore) {
        guard !stream.scheduled, !stream.removed, stream.hasWork, state != .draining, state != .closed else { return }
        sendStreams.schedule(stream)
        if state == .open { endpoint.needsWrite(self) }
    }

    /// Only the framing order changes: what is already in the kernel's send
    /// buffer goes first regardless (TCP's head-of-line cost).
    func makeUrgent(_ stream: TCPStreamCore) { sendStreams.makeUrgent(stream) }

    func queueControl(_ type: MuxRecordType, stream: Int64 = 0, value: UInt64) {
        var payload: [UInt8] = []
        VarInt.encode(value, into: &payload)
        queueRecord(type, stream: stream, payload: payload)
    }

    func queueControl(_ type: MuxRecordType, stream: Int64 = 0, payload: [UInt8]) {
        queueRecord(type, stream: stream, payload: payload)
    }

    private func queueRecord(_ type: MuxRecordType, stream: Int64 = 0, payload: [UInt8]) {
        guard state != .draining, state != .closed else { return }
        MuxRecord.append(type, stream: stream, payload: payload, to: &control)
        if control.count > MuxLimits.maxControlBacklog {
            // The peer keeps asking (PINGs, stops) and never reads our answers.
            refuse(MuxViolation("more than \(MuxLimits.maxControlBacklog) bytes of control records unsent: the peer does not read"))
            return
        }
        if state == .open || state == .awaitingSettings { endpoint.needsWrite(self) }
    }

    /// Writes staged bytes until the socket is full, the budget is spent or
    /// nothing is left.
    func flush() {
        guard state == .awaitingSettings || state == .open || state == .draining else { return }
        var budget = Self.flushBudget
        while budget > 0 {
            if stagingStart == stagingEnd {
                refill()
                if stagingEnd == 0 { break }
            }
            let staged = staging!
            ERR_clear_error()
            let n = SSL_write(ssl, staged.baseAddress! + stagingStart, Int32(stagingEnd - stagingStart))
            if n > 0 {
                stagingStart += Int(n)
                budget -= Int(n)
                continue
            }
            switch SSL_get_error(ssl, n) {
            case SSL_ERROR_WANT_WRITE:
                setInterest(out: true)
                return
            case SSL_ERROR_WANT_READ:
                return
            case SSL_ERROR_SYSCALL:
                if state == .draining { closeNow() } else { fail(.connectionLost(detail: String(cString: strerror(errno)))) }
                return
            default:
                fail(OpenSSLFailure.error(of: ssl, during: "writing", offered: endpoint.configuration.applicationProtocols))
                return
            }
        }
        if budget <= 0 {
            endpoint.needsWrite(self)
            return
        }
        setInterest(out: false)
        if state == .draining && !shutdownSent { sendShutdown() }
    }

    /// Frames control records, then one DATA record per stream per turn, in
    /// `SendScheduler`'s order (urgent first, bulk keeping a share).
    private func refill() {
        stagingStart = 0
        stagingEnd = 0
        guard !control.isEmpty || (state == .open && !sendStreams.isEmpty) else { return }
        if staging == nil { staging = .allocate(byteCount: Self.stagingSize, alignment: 16) }
        let out = staging!
        var used = 0
        if !control.isEmpty {
            let n = min(control.count, out.count)
            control.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
            control.removeFirst(n)
            used = n
        }
        guard state == .open, let connection else {
            stagingEnd = used
            return
        }
        let maxRecord = endpoint.configuration.maxDataRecord
        while out.count - used > MuxLimits.maxHeader, let stream = sendStreams.next(ready: { !$0.removed }) {
            let credit = connection.connectionCreditLeft
            let (written, data) = stream.frame(into: UnsafeMutableRawBufferPointer(rebasing: out[used...]),
                                               connectionCredit: credit, maxRecord: maxRecord)
            used += written
            connection.sent(data)
            if written > 0 { sendStreams.tookTurn(stream) }
            if stream.sendDone {
                sendStreams.remove(stream)
                connection.streamMayBeDone(stream)
            } else if stream.hasWork {
                if stream.queuedBytes > 0 && connection.connectionCreditLeft == 0 {
                    sendStreams.remove(stream)
                    connection.waitForCredit(stream)
                } else if written > 0 {
                    sendStreams.rotate(stream)
                } else {
                    // No room left in this staging round; it keeps its turn.
                    break
                }
            } else {
                sendStreams.remove(stream)
            }
        }
        stagingEnd = used
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
        drainDeadline = monotonicNanoseconds() + UInt64(TCPConfiguration.drainTimeout.seconds * 1e9)
        sendStreams.removeAll()
        endpoint.needsWrite(self)
    }

    private func sendShutdown() {
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
    private func refuse(_ violation: MuxViolation) {
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
            return startedAt + UInt64(endpoint.configuration.handshakeTimeout.seconds * 1e9)
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
