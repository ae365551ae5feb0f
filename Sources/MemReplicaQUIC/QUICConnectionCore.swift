import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
import DequeModule
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// One QUIC connection: the ngtcp2 connection, its TLS session and its
/// streams. Confined to the endpoint's loop thread; `QUICConnection` is the
/// handle other threads hold.
package final class QUICConnectionCore: StreamConnectionCore, @unchecked Sendable {
    enum State { case handshaking, established, closed(TransportError) }

    /// Strong for the same reason; the cycle through the endpoint's tables
    /// is broken in `finish`.
    package let endpoint: QUICEndpoint
    /// What its streams share across threads: send share, credit, close reason.
    package let shared: ConnectionSharedState
    package private(set) var conn: OpaquePointer!
    let tls: UnsafeMutablePointer<qs_tls_session>
    let isClient: Bool
    let remote: SocketAddressStorage
    package let remoteAddress: PeerAddress
    var state = State.handshaking
    package var peerIdentity = PeerIdentity.none

    /// Connection IDs routed to this connection by the endpoint.
    var routedIDs: Set<ConnectionID> = []
    /// Set when a server connection negotiated ALPN `h3`: HTTP/3 owns its
    /// streams, and the memreplica acceptor never sees it.
    /// The application session (HTTP/3) that took this connection over, if any.
    var application: (any QUICApplicationSession)?
    package var streams: [Int64: QUICStreamCore] = [:]
    /// Streams with data to send, served round-robin one packet at a time.
    var sendQueue = SendScheduler<QUICStreamCore>()
    package var waiters = ConnectionWaiters<QUICStreamCore>()
    package var connectWaiter: Delivery<QUICConnectionCore>?
    /// Set by a callback; reported when ngtcp2 returns the failure.
    package var callbackError: TransportError?
    /// The peer answered with a stateless reset (ngtcp2 then drains).
    var receivedStatelessReset = false
    /// Queued in the endpoint's list of connections to write.
    var wantsWrite = false
    /// Server: the source host the endpoint counted this connection under
    /// (`ConnectionAdmission`), and whether it still counts as half-open.
    var admittedHost: String?
    var countedHalfOpen = false
    /// The receive window reserved in the memory budget for this
    /// connection's life (everything the peer may send before we read).
    private(set) var receiveWindow: UInt64 = 0
    /// Bounds what this connection's frame readers hold: its receive window.
    /// Set with the window, before any stream exists.
    private(set) var frameAllowance: FrameAllowance?
    /// Server: why to close the connection as soon as the packet being
    /// read is done (a cap found over at handshake completion).
    private var pendingRefusal: String?
    var closeErrorSnapshot: TransportError? { shared.closeErrorSnapshot }

    package var bytesSent: UInt64 = 0, bytesReceived: UInt64 = 0
    package var packetsSent: UInt64 = 0, packetsReceived: UInt64 = 0
    let startedAt = monotonicNanoseconds()
    /// ngtcp2 stops its handshake timer once TLS completes, but a client is
    /// connected only when the server confirms (it may still refuse our
    /// certificate), so the whole connect is bounded here.
    var handshakeDeadline: UInt64 {
        guard case .handshaking = state else { return UInt64.max }
        return startedAt + UInt64(endpoint.configuration.handshakeTimeout.seconds * 1e9)
    }
    var handshakeDuration: Duration?
    /// Initial and Handshake keys are gone: no datagram is padded any more.
    private(set) var isHandshakeConfirmed = false

    // Resumption and 0-RTT (loop thread).
    var sessionResumed = false
    var earlyDataOutcome = EarlyDataOutcome.notAttempted
    /// Client: bytes the caller asked to send first, on the first stream.
    private var earlyRequest: [UInt8]?
    /// Client: the stream carrying `earlyRequest`, once opened.
    private(set) var earlyStream: QUICStreamCore?
    /// Client: the stream was opened under remembered server parameters so
    /// its bytes may go out in 0-RTT.
    private var earlyStreamBeforeHandshake = false
    /// ngtcp2 installed 0-RTT keys: a client's TLS offered early data, a
    /// server's accepted it.
    var earlyKeysInstalled = false
    /// Server: handed to `accept` at 0-RTT, before the handshake completed.
    private var deliveredEarly = false

    var isClosed: Bool { if case .closed = state { return true } else { return false } }
    package var closeError: TransportError? { if case .closed(let e) = state { return e } else { return nil } }

    private init(endpoint: QUICEndpoint, isClient: Bool, remote: SocketAddressStorage) {
        self.endpoint = endpoint
        shared = ConnectionSharedState(budget: endpoint.memoryBudget,
                                       receiveWindow: endpoint.configuration.connectionReceiveWindow)
        self.isClient = isClient
        self.remote = remote
        self.remoteAddress = PeerAddress(storage: remote)
        tls = .allocate(capacity: 1)
        tls.initialize(to: qs_tls_session())
    }

    /// A client connection to `remote`; the Initial is sent on the next write.
    ///
    /// With a `ticket` the TLS session is resumed. With `earlyData` too,
    /// those bytes go on the first stream in 0-RTT under the remembered
    /// server parameters; without a ticket they go as soon as the handshake
    /// completes. The caller vouches that they are safe to replay.
    static func client(endpoint: QUICEndpoint, remote: SocketAddressStorage, ticket: SessionTicket? = nil,
                       earlyData: [UInt8]? = nil) throws -> QUICConnectionCore {
        let core = QUICConnectionCore(endpoint: endpoint, isClient: true, remote: remote)
        let (_, dcid) = ConnectionID.random(length: 18)
        let (scidKey, scid) = ConnectionID.random()
        try core.create(dcid: dcid, scid: scid, version: UInt32(NGTCP2_PROTO_VER_V1), originalDCID: nil,
                        resume: ticket, offerEarlyData: earlyData != nil)
        core.routedIDs.insert(scidKey)
        core.earlyRequest = earlyData
        if let ticket, let earlyData {
            var params = ticket.earlyTransportParameters
            qs_conn_set_early_remote_transport_params(core.conn, &params)
            if let stream = core.openStreamNow() {
                stream.queueFromLoop(earlyData)
                core.earlyStream = stream
                core.earlyStreamBeforeHandshake = true
                core.earlyRequest = nil
            }
        }
        return core
    }

    /// A server connection for a client's first Initial packet.
    /// After a Retry, `originalDCID` is the one the client first chose (from
    /// the token) and `retrySCID` the ID the Retry gave it.
    static func server(endpoint: QUICEndpoint, remote: SocketAddressStorage, header: ngtcp2_pkt_hd,
                       originalDCID: ngtcp2_cid, retrySCID: ngtcp2_cid?) throws -> QUICConnectionCore {
        let core = QUICConnectionCore(endpoint: endpoint, isClient: false, remote: remote)
        let (scidKey, scid) = ConnectionID.random()
        try core.create(dcid: header.scid, scid: scid, version: header.version, originalDCID: originalDCID,
                        retrySCID: retrySCID)
        core.routedIDs.insert(scidKey)
        core.routedIDs.insert(ConnectionID(header.dcid))
        return core
    }

    private func create(dcid: ngtcp2_cid, scid: ngtcp2_cid, version: UInt32, originalDCID: ngtcp2_cid?,
                        retrySCID: ngtcp2_cid? = nil, resume: SessionTicket? = nil, offerEarlyData: Bool = false) throws {
        let config = endpoint.configuration
        guard let window = endpoint.memoryBudget.reserveReceiveWindow(wanted: config.connectionReceiveWindow) else {
            throw TransportError.memoryBudgetExhausted(limit: endpoint.memoryBudget.limit)
        }
        receiveWindow = window
        frameAllowance = FrameAllowance(limit: Int(window), budget: endpoint.memoryBudget)
        shared.setReceiveWindow(window)
        let streamWindow = min(config.streamReceiveWindow, window)
        var settings = makeSettings(window: window, streamWindow: streamWindow)
        var params = makeTransportParameters(window: window, streamWindow: streamWindow, scid: scid,
                                             originalDCID: originalDCID, retrySCID: retrySCID)
        var callbacks = QUICCallbacks.table(isClient: isClient)
        var dcidVar = dcid, scidVar = scid
        let user = Unmanaged.passUnretained(self).toOpaque()
        var connPtr: OpaquePointer?
        let rc = withPath { path in
            isClient
                ? qs_conn_client_new(&connPtr, &dcidVar, &scidVar, path, version, &callbacks, &settings, &params, user)
                : qs_conn_server_new(&connPtr, &dcidVar, &scidVar, path, version, &callbacks, &settings, &params, user)
        }
        guard rc == 0, let c = connPtr else {
            throw TransportError.protocolFailure("creating connection: \(String(cString: ngtcp2_strerror(rc)))")
        }
        conn = c
        try startTLS(on: c, user: user, resume: resume, offerEarlyData: offerEarlyData)
    }

    /// ngtcp2's settings: packet sizes (larger to a peer on this host),
    /// windows, timeouts and the congestion controller.
    private func makeSettings(window: UInt64, streamWindow: UInt64) -> ngtcp2_settings {
        let config = endpoint.configuration
        var settings = ngtcp2_settings()
        qs_settings_default(&settings)
        settings.initial_ts = monotonicNanoseconds()
        settings.max_tx_udp_payload_size = config.maxUDPPayloadSize
        if let cap = config.hostLocalUDPPayloadSize,
           let routePayload = HostLocalRoute.payloadSize(to: remote, namespace: config.networkNamespace) {
            // A peer on this host: the loopback MTU is certain, nothing to
            // discover. A 4 KiB fault answer becomes one packet instead of
            // three, and bulk moves in fewer.
            settings.max_tx_udp_payload_size = max(config.maxUDPPayloadSize, min(cap, routePayload))
            settings.no_tx_udp_payload_size_shaping = 1
            settings.no_pmtud = 1
        }
        settings.handshake_timeout = UInt64(config.handshakeTimeout.seconds * 1e9)
        settings.max_window = window
        settings.max_stream_window = streamWindow
        switch config.congestionControl {
        case .cubic: settings.cc_algo = NGTCP2_CC_ALGO_CUBIC
        case .bbr: settings.cc_algo = NGTCP2_CC_ALGO_BBR2
        case .reno: settings.cc_algo = NGTCP2_CC_ALGO_RENO
        }
        if config.debugLog { qs_settings_log_to_stderr(&settings) }
        return settings
    }

    /// What we grant the peer (windows, streams, idle timeout) and, as a
    /// server, the IDs and token the client checks.
    private func makeTransportParameters(window: UInt64, streamWindow: UInt64, scid: ngtcp2_cid,
                                         originalDCID: ngtcp2_cid?, retrySCID: ngtcp2_cid?) -> ngtcp2_transport_params {
        let config = endpoint.configuration
        var params = ngtcp2_transport_params()
        qs_transport_params_default(&params)
        params.initial_max_stream_data_bidi_local = streamWindow
        params.initial_max_stream_data_bidi_remote = streamWindow
        params.initial_max_stream_data_uni = streamWindow
        params.initial_max_data = window
        params.initial_max_streams_bidi = config.maxConcurrentStreams
        params.initial_max_streams_uni = acceptedProtocols.compactMap { endpoint.applications[$0]?.peerUnidirectionalStreams }.max() ?? 0
        params.max_idle_timeout = UInt64(config.livenessTimeout.seconds * 1e9)
        params.active_connection_id_limit = 4
        // Peers do not migrate; a path change is not something we follow.
        params.disable_active_migration = 1
        if let odcid = originalDCID {
            params.original_dcid = odcid
            // The token for the connection ID of our handshake (the others
            // come with NEW_CONNECTION_ID): a restarted server can reset a
            // client that never switched IDs.
            var ourID = scid
            let made = withUnsafeMutableBytes(of: &params.stateless_reset_token) { token in
                endpoint.makeStatelessResetToken(for: &ourID, into: token.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
            params.stateless_reset_token_present = made ? 1 : 0
        }
        if let retrySCID {
            // The client checks that the Retry it followed came from us.
            params.retry_scid = retrySCID
            params.retry_scid_present = 1
        }
        return params
    }

    /// The GnuTLS session (ALPN, a ticket to resume with, early data), tied
    /// to the new ngtcp2 connection `c`; on failure the connection is freed.
    private func startTLS(on c: OpaquePointer, user: UnsafeMutableRawPointer, resume: SessionTicket?,
                          offerEarlyData: Bool) throws {
        var err = [CChar](repeating: 0, count: 256)
        let alpn = acceptedProtocols.map { strdup($0) }
        defer { alpn.forEach { free($0) } }
        let resumeData = resume?.session ?? []
        let tlsRC = alpn.map { UnsafePointer<CChar>($0) }.withUnsafeBufferPointer { list in
            resumeData.withUnsafeBufferPointer { data in
                qs_tls_session_new(tls, endpoint.tls.handle, isClient ? 0 : 1, list.baseAddress, list.count,
                                   nil, resume == nil ? nil : data.baseAddress, data.count, offerEarlyData ? 1 : 0,
                                   &err, err.count)
            }
        }
        guard tlsRC == 0 else {
            ngtcp2_conn_del(c)
            conn = nil
            throw TransportError.tlsConfiguration(stringFromCBuffer(err))
        }
        tls.pointee.conn_ref.user_data = user
        tls.pointee.conn_ref.get_conn = { ref in
            Unmanaged<QUICConnectionCore>.fromOpaque(ref!.pointee.user_data).takeUnretainedValue().conn
        }
        ngtcp2_conn_set_tls_native_handle(c, UnsafeMutableRawPointer(tls.pointee.session))
    }

    /// Keep-alive PINGs, armed once the handshake has completed. Not before:
    /// ngtcp2 0.12.1 writes a keep-alive (or probe) PING due during an
    /// unanswered handshake into a 0-RTT packet padded too little for the
    /// header-protection sample and aborts (`ngtcp2_ppe_final` assertion;
    /// fixed upstream in 0.18). A mirror reconnecting with 0-RTT across a
    /// cut link met it within seconds. The handshake has its own timeout.
    private func armKeepAlive() {
        guard let conn, let keepAlive = endpoint.configuration.keepAliveInterval else { return }
        // A keep-alive slower than the idle timeout would keep nothing
        // alive: ping at least twice per idle period.
        let interval = min(keepAlive, endpoint.configuration.livenessTimeout / 2)
        ngtcp2_conn_set_keep_alive_timeout(conn, UInt64(interval.seconds * 1e9))
    }

    /// Calls body with this connection's path (local socket, remote peer).
    func withPath<R>(_ body: (UnsafePointer<ngtcp2_path>) -> R) -> R {
        endpoint.localStorage.withSockaddr { local, localLen in
            remote.withSockaddr { rem, remLen in
                var path = ngtcp2_path(
                    local: ngtcp2_addr(addr: UnsafeMutablePointer(mutating: local), addrlen: localLen),
                    remote: ngtcp2_addr(addr: UnsafeMutablePointer(mutating: rem), addrlen: remLen),
                    user_data: nil)
                return body(&path)
            }
        }
    }

    // MARK: packets in

    func receive(_ packet: UnsafeRawBufferPointer, now: UInt64) {
        guard !isClosed else { return }
        packetsReceived += 1
        bytesReceived += UInt64(packet.count)
        var info = ngtcp2_pkt_info()
        let rc = withPath { path in
            qs_conn_read_pkt(conn, path, &info, packet.baseAddress!.assumingMemoryBound(to: UInt8.self),
                             packet.count, now)
        }
        if rc != 0 {
            handleFatal(rc, now: now)
        } else if let reason = pendingRefusal {
            pendingRefusal = nil
            endpoint.logger.warning("refusing a QUIC connection: \(reason)",
                                    metadata: ["peer": "\(remoteAddress)", "identity": "\(peerIdentity)"])
            closeByApplication(errorCode: ProtocolErrorCode.tooManyConnections.rawValue, reason: reason, now: now)
        } else if isClient {
            if tls.pointee.ticket.data != nil { keepTicket() }
        } else if earlyKeysInstalled, !deliveredEarly, case .handshaking = state {
            // Not from the key callback: GnuTLS restores the resumed
            // session's peer certificate later in the same flight.
            if !earlyDataAccepted() { handleFatal(NGTCP2_ERR_CALLBACK_FAILURE, now: now) }
        }
    }

    /// Client: hands the session ticket that just arrived, with the
    /// server's transport parameters, to the endpoint for the next connect.
    private func keepTicket() {
        defer { qs_tls_clear_ticket(tls) }
        guard let params = ngtcp2_conn_get_remote_transport_params(conn) else { return }
        let ticket = tls.pointee.ticket
        let session = Array(UnsafeBufferPointer(start: ticket.data, count: Int(ticket.size)))
        endpoint.storeTicket(SessionTicket(session: session, serverParameters: params.pointee), for: self)
    }

    /// Ends the connection after ngtcp2 returned `rc`, telling the peer why
    /// when that still makes sense.
    package func handleFatal(_ rc: Int32, now: UInt64) {
        switch rc {
        case NGTCP2_ERR_DRAINING:
            finish(receivedStatelessReset
                ? .connectionLost(detail: "the peer no longer knows this connection (stateless reset; it restarted or lost its state)")
                : remoteCloseError())
        case NGTCP2_ERR_DROP_CONN:
            finish(callbackError ?? .protocolFailure("connection dropped"))
        case NGTCP2_ERR_IDLE_CLOSE, NGTCP2_ERR_HANDSHAKE_TIMEOUT:
            // A send that failed with "no route" says more than the timeout.
            finish(callbackError ?? timeoutError())
        case NGTCP2_ERR_CRYPTO:
            let alert = ngtcp2_conn_get_tls_alert(conn)
            var ccerr = ngtcp2_connection_close_error()
            ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, alert, nil, 0)
            sendClose(&ccerr, now: now)
            finish(callbackError ?? localTLSError(alert: alert))
        default:
            var ccerr = ngtcp2_connection_close_error()
            switch callbackError {
            case .alpnMismatch?:
                ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, 120, nil, 0)
            case .clientCertificateMissing?:
                ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, 116, nil, 0)
            case .untrustedPeer?:
                // A resumed session whose stored certificate no longer verifies.
                ngtcp2_connection_close_error_set_transport_error_tls_alert(&ccerr, 42, nil, 0)
            default:
                if let code = application?.failureCode {
                    // HTTP/3 broke: close with its error code (RFC 9114 §8.1).
                    ngtcp2_connection_close_error_set_application_error(&ccerr, code, nil, 0)
                } else {
                    ngtcp2_connection_close_error_set_transport_error_liberr(&ccerr, rc, nil, 0)
                }
            }
            sendClose(&ccerr, now: now)
            finish(callbackError ?? .protocolFailure(String(cString: ngtcp2_strerror(rc))))
        }
    }

    private func timeoutError() -> TransportError {
        let config = endpoint.configuration
        if case .handshaking = state {
            if packetsReceived == 0 {
                return .peerUnreachable(address: remoteAddress.description,
                                        detail: "no answer within \(Int(config.handshakeTimeout.seconds)) s")
            }
            return .handshakeTimeout(seconds: config.handshakeTimeout.seconds)
        }
        return .idleTimeout(seconds: config.livenessTimeout.seconds)
    }

    /// Why our own TLS stack failed the handshake.
    private func localTLSError(alert: UInt8) -> TransportError {
        if tls.pointee.peer_sent_no_certificate != 0 || alert == 116 {
            return .clientCertificateMissing
        }
        if tls.pointee.verify_failed != 0 {
            return .untrustedPeer(reason: withUnsafeBytes(of: tls.pointee.verify_reason) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            })
        }
        if alert == 120 { return .alpnMismatch(offered: endpoint.configuration.applicationProtocols) }
        return .tlsFailure(tlsAlertName(alert))
    }

    /// Why the peer closed, from its CONNECTION_CLOSE frame.
    private func remoteCloseError() -> TransportError {
        var ccerr = ngtcp2_connection_close_error()
        ngtcp2_conn_get_connection_close_error(conn, &ccerr)
        let reason: String
        if let r = ccerr.reason, ccerr.reasonlen > 0 {
            reason = String(decoding: UnsafeBufferPointer(start: r, count: ccerr.reasonlen), as: UTF8.self)
        } else {
            reason = ""
        }
        if ccerr.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION {
            return .peerClosed(errorCode: ccerr.error_code, reason: reason)
        }
        let code = ccerr.error_code
        if code >= 0x100 && code < 0x200 {
            let alert = UInt8(code - 0x100)
            switch alert {
            case 116: return .clientCertificateMissing
            case 120: return .alpnMismatch(offered: endpoint.configuration.applicationProtocols)
            case 42, 43, 44, 45, 46, 48, 49:
                return .rejectedByPeer(reason: tlsAlertName(alert))
            default: return .tlsFailure("peer sent alert \(tlsAlertName(alert))")
            }
        }
        if code == 0 { return .peerClosed(errorCode: 0, reason: reason) }
        return .protocolFailure("peer closed with transport error 0x\(String(code, radix: 16))\(reason.isEmpty ? "" : ": \(reason)")")
    }

    private func sendClose(_ ccerr: inout ngtcp2_connection_close_error, now: UInt64) {
        guard conn != nil, ngtcp2_conn_is_in_closing_period(conn) == 0,
              ngtcp2_conn_is_in_draining_period(conn) == 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 1500)
        var info = ngtcp2_pkt_info()
        var ps = ngtcp2_path_storage()
        ngtcp2_path_storage_zero(&ps)
        let n = buffer.withUnsafeMutableBufferPointer { buf in
            qs_conn_write_connection_close(conn, &ps.path, &info, buf.baseAddress, buf.count, &ccerr, now)
        }
        if n > 0 {
            _ = buffer.withUnsafeBytes { endpoint.sendDatagrams(UnsafeRawBufferPointer(rebasing: $0.prefix(n)), segmentSize: 0, for: self) }
        }
    }

    /// Closes with an application error code, as the user asked.
    func closeByApplication(errorCode: UInt64, reason: String, now: UInt64) {
        guard !isClosed else { return }
        var ccerr = ngtcp2_connection_close_error()
        var reasonBytes = Array(reason.utf8.prefix(256))
        // An application protocol may have no code 0 (HTTP/3: H3_NO_ERROR).
        let code = errorCode == 0 ? application?.noErrorCode ?? 0 : errorCode
        reasonBytes.withUnsafeMutableBufferPointer { r in
            ngtcp2_connection_close_error_set_application_error(&ccerr, code, r.baseAddress, r.count)
            sendClose(&ccerr, now: now)
        }
        finish(.closedLocally)
    }

    /// Tears the connection down and tells everyone waiting on it.
    func finish(_ error: TransportError) {
        guard !isClosed else { return }
        let wasEstablished: Bool
        if case .established = state { wasEstablished = true } else { wasEstablished = false }
        state = .closed(error)
        if wasEstablished || !isClient {
            endpoint.logger.debug("connection closed", metadata: ["peer": "\(remoteAddress)", "reason": "\(error)"])
        }
        failStreamsAndWaiters(error)
        sendQueue.removeAll()
        streams.removeAll()
        endpoint.forget(self)
        application?.close()
        application = nil
        ngtcp2_conn_del(conn)
        conn = nil
        qs_tls_session_free(tls)
        endpoint.memoryBudget.releaseReceiveWindow(receiveWindow)
        receiveWindow = 0
    }

    deinit {
        // A connection whose creation failed part way never reached `finish`.
        endpoint.memoryBudget.releaseReceiveWindow(receiveWindow)
        tls.deinitialize(count: 1)
        tls.deallocate()
    }

    // MARK: events from ngtcp2 (called from QUICCallbacks)

    /// Checks ALPN and the peer's certificate and records its identity. On
    /// a resumed session the certificate is the one the ticket holds,
    /// verified again (so an expired one is refused, not carried on); a
    /// resumed session without one fails rather than lose the identity.
    private func verifyPeer() -> Bool {
        var alpn = [CChar](repeating: 0, count: 64)
        guard qs_tls_selected_alpn(tls, &alpn, alpn.count) == 0,
              acceptedProtocols.contains(stringFromCBuffer(alpn)) else {
            callbackError = .alpnMismatch(offered: endpoint.configuration.applicationProtocols)
            return false
        }
        if qs_tls_verify_resumed_peer(tls) != 0 {
            let reason = withUnsafeBytes(of: tls.pointee.verify_reason) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            callbackError = !isClient && tls.pointee.peer_sent_no_certificate != 0
                ? .clientCertificateMissing : .untrustedPeer(reason: reason)
            return false
        }
        var der: UnsafePointer<UInt8>?
        var length = 0
        guard qs_tls_peer_certificate(tls, &der, &length) == 0, let der else {
            callbackError = isClient ? .untrustedPeer(reason: "server sent no certificate") : .clientCertificateMissing
            return false
        }
        peerIdentity = PeerIdentity(certificate: Array(UnsafeBufferPointer(start: der, count: length)))
        sessionResumed = qs_tls_session_resumed(tls) != 0
        return true
    }

    func handshakeCompleted() -> Bool {
        // A connection handed out at 0-RTT was checked then, and its
        // identity may be read on other threads now: never rewrite it.
        guard deliveredEarly || verifyPeer() else { return false }
        armKeepAlive()
        if !isClient {
            endpoint.serverHandshakeEnded(self)
            if let reason = endpoint.identityOverCap(self) {
                // Closed once this packet is read; nobody accepts it.
                pendingRefusal = reason
                return true
            }
            // ngtcp2 confirms a server's handshake as it completes, without
            // the callback.
            isHandshakeConfirmed = true
            // The client's certificate is verified (or, resumed, restored
            // from our own ticket): only now may a ticket carry it.
            if qs_tls_send_ticket(tls) != 0 {
                endpoint.logger.debug("no session ticket sent", metadata: ["peer": "\(remoteAddress)"])
            }
            if qs_tls_early_data_accepted(tls) != 0 { earlyDataOutcome = .accepted }
            state = .established
            handshakeDuration = .nanoseconds(Int64(monotonicNanoseconds() - startedAt))
            if let application {
                guard application.start() else { return false }
            } else if !deliveredEarly {
                endpoint.connectionEstablished(self)
            }
            return true
        }
        if earlyStreamBeforeHandshake {
            if qs_tls_early_data_accepted(tls) != 0 {
                earlyDataOutcome = .accepted
            } else {
                earlyDataOutcome = earlyKeysInstalled ? .rejected : .notAttempted
                guard resendEarlyData() else { return false }
            }
        } else if let bytes = earlyRequest, let stream = openStreamNow() {
            // No ticket: the request goes in the first 1-RTT packets.
            stream.queueFromLoop(bytes)
            earlyStream = stream
        }
        earlyRequest = nil
        if sessionResumed {
            // The server proved it issued our ticket and cannot refuse a
            // certificate we did not send: connected one round trip before
            // HANDSHAKE_DONE would say so.
            state = .established
            handshakeDuration = .nanoseconds(Int64(monotonicNanoseconds() - startedAt))
            connectWaiter?.succeed(self)
            connectWaiter = nil
        }
        return true
    }

    /// Client: 0-RTT was refused (or never went out). ngtcp2 forgets the
    /// early stream; open it again and send its bytes in 1-RTT.
    private func resendEarlyData() -> Bool {
        let rc = ngtcp2_conn_early_data_rejected(conn)
        guard rc == 0 else {
            callbackError = .protocolFailure("discarding early data: \(String(cString: ngtcp2_strerror(rc)))")
            return false
        }
        guard let stream = earlyStream else { return true }
        var id: Int64 = -1
        guard ngtcp2_conn_open_bidi_stream(conn, &id, Unmanaged.passUnretained(stream).toOpaque()) == 0,
              id == stream.id else {
            callbackError = .protocolFailure("cannot reopen stream \(stream.id) after 0-RTT was refused")
            return false
        }
        stream.resendAfterRejectedEarlyData()
        return true
    }

    /// Server: TLS accepted the client's ticket and its 0-RTT data. The
    /// ticket proves who the client is (its certificate, verified when the
    /// ticket was issued, is in it), so the connection goes to `accept` now
    /// and early requests are answered in this flight, one round trip
    /// before the handshake completes.
    private func earlyDataAccepted() -> Bool {
        guard verifyPeer() else { return false }
        earlyDataOutcome = .accepted
        deliveredEarly = true
        if application == nil { endpoint.connectionEstablished(self) }
        return true
    }

    /// Client side: HANDSHAKE_DONE arrived, so the server accepted our
    /// certificate too. Only now does `connect` return (a resumed session
    /// returned at `handshakeCompleted`).
    func handshakeConfirmed() {
        isHandshakeConfirmed = true
        guard isClient, case .handshaking = state else { return }
        state = .established
        handshakeDuration = .nanoseconds(Int64(monotonicNanoseconds() - startedAt))
        connectWaiter?.succeed(self)
        connectWaiter = nil
    }

    /// Resets the streams whose peer took none of their bytes for `timeout` ns.
    func resetStalledStreams(now: UInt64, after timeout: UInt64) {
        guard case .established = state else { return }
        for stream in Array(streams.values) where !stream.closedByStack && stream.isStalled(now: now, after: timeout) {
            endpoint.logger.info("resetting a stream whose peer stopped reading",
                                 metadata: ["peer": "\(remoteAddress)", "stream": "\(stream.id)"])
            ngtcp2_conn_shutdown_stream(conn, stream.id, ProtocolErrorCode.peerStalled.rawValue)
            stream.fail(.peerStalled(seconds: Double(timeout) / 1e9))
            stream.discardReceived()
            endpoint.memoryBudget.noteStalledStreamReset()
            endpoint.needsWrite(self)
        }
    }

    func streamOpenedByPeer(_ id: Int64) {
        let stream = QUICStreamCore(id: id, connection: self)
        streams[id] = stream
        ngtcp2_conn_set_stream_user_data(conn, id, Unmanaged.passUnretained(stream).toOpaque())
        waiters.peerOpened(stream)
    }

    func streamClosed(_ stream: QUICStreamCore, appErrorCode: UInt64?) {
        stream.closedByStack = true
        streams[stream.id] = nil
        // Credit readers took and no sweep reported yet: the sweep only
        // visits streams still here, so hand it back now and on every read.
        stream.mailbox.withLock { $0.forgotten = true }
        stream.returnCredit()
        if let code = appErrorCode, code != 0 || !stream.finReceived {
            stream.fail(.streamReset(errorCode: code))
        } else if !stream.finReceived {
            stream.fail(.streamReset(errorCode: appErrorCode ?? 0))
        } else {
            stream.finishedCleanly()
        }
        if ngtcp2_conn_is_local_stream(conn, stream.id) == 0 {
            // Give the peer its stream credit back.
            ngtcp2_conn_extend_max_streams_bidi(conn, 1)
        }
    }

    package func openStreamNow() -> QUICStreamCore? {
        var id: Int64 = -1
        let rc = ngtcp2_conn_open_bidi_stream(conn, &id, nil)
        guard rc == 0 else { return nil }
        let stream = QUICStreamCore(id: id, connection: self)
        streams[id] = stream
        ngtcp2_conn_set_stream_user_data(conn, id, Unmanaged.passUnretained(stream).toOpaque())
        return stream
    }

    /// The peer raised our stream limit: serve waiting openers.
    func streamCreditAvailable() {
        while !waiters.openWaiters.isEmpty, let stream = openStreamNow() {
            waiters.openWaiters.removeFirst().succeed(stream)
        }
    }

    func schedule(_ stream: QUICStreamCore) {
        guard !stream.scheduled, !stream.flowBlocked, stream.hasDataToSend else { return }
        sendQueue.schedule(stream)
        endpoint.needsWrite(self)
    }

    func makeUrgent(_ stream: QUICStreamCore) { sendQueue.makeUrgent(stream) }

    package func postToLoop(_ body: @escaping @Sendable () -> Void) { endpoint.post(body) }

    /// Returns every stream's outstanding credit (loop thread).
    func returnAllCredit() {
        shared.creditSweepStarted()
        for s in streams.values { s.returnCredit() }
    }

    /// A reader took `count` bytes: open the windows by as much.
    func consumed(_ count: Int, on stream: QUICStreamCore) {
        guard count > 0 else { return }
        shared.creditReturned(count)
        guard !isClosed else { return }
        if !stream.closedByStack {
            ngtcp2_conn_extend_max_stream_offset(conn, stream.id, UInt64(count))
        }
        ngtcp2_conn_extend_max_offset(conn, UInt64(count))
        endpoint.needsWrite(self)
    }

    /// Connection credit for received bytes nobody will read (a stream
    /// this side reset or stopped reading).
    func returnDiscarded(_ count: Int) {
        guard count > 0, !isClosed else { return }
        ngtcp2_conn_extend_max_offset(conn, UInt64(count))
        endpoint.needsWrite(self)
    }

    package func statistics() -> ConnectionStatistics {
        var s = ConnectionStatistics()
        s.bytesSent = bytesSent; s.bytesReceived = bytesReceived
        s.packetsSent = packetsSent; s.packetsReceived = packetsReceived
        s.handshakeDuration = handshakeDuration
        s.sessionResumed = sessionResumed
        s.earlyData = earlyDataOutcome
        guard let conn else { return s }
        var cs = ngtcp2_conn_stat()
        qs_conn_get_conn_stat(conn, &cs)
        s.latestRTT = .nanoseconds(Int64(cs.latest_rtt))
        s.minRTT = cs.min_rtt == UInt64.max ? .zero : .nanoseconds(Int64(cs.min_rtt))
        s.smoothedRTT = .nanoseconds(Int64(cs.smoothed_rtt))
        s.rttVariance = .nanoseconds(Int64(cs.rttvar))
        s.ptoCount = cs.pto_count
        s.congestionWindow = cs.cwnd
        s.slowStartThreshold = cs.ssthresh == UInt64.max ? 0 : cs.ssthresh
        s.bytesInFlight = cs.bytes_in_flight
        s.deliveryRateBytesPerSecond = cs.delivery_rate_sec
        s.pacingRateBytesPerSecond = cs.pacing_rate * 1e9
        s.maxUDPPayloadSize = cs.max_tx_udp_payload_size
        return s
    }
}
