import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
#if canImport(Glibc)
import Glibc
#endif

/// Making a connection: the client's and server's ngtcp2 connection, its
/// settings and transport parameters, the TLS session, the keep-alive.
extension QUICConnectionCore {
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
        // A server accepts 0-RTT only with the fullest windows: the client's
        // early data obeys the windows of the connection its ticket came
        // from, and accepted 0-RTT may not be granted less (refused 0-RTT
        // costs a round trip; the bytes go again in 1-RTT).
        let earlyData = isClient
            ? offerEarlyData
            : window >= endpoint.memoryBudget.largestReceiveWindow(wanted: config.connectionReceiveWindow)
        try startTLS(on: c, user: user, resume: resume, earlyData: earlyData)
    }

    /// ngtcp2's settings: packet sizes (larger to a peer on this host),
    /// windows, timeouts and the congestion controller.
    private func makeSettings(window: UInt64, streamWindow: UInt64) -> ngtcp2_settings {
        let config = endpoint.configuration
        var settings = ngtcp2_settings()
        qs_settings_default(&settings)
        settings.initial_ts = monotonicNanoseconds()
        settings.max_tx_udp_payload_size = config.maxUDPPayloadSize
        let routePayload = HostLocalRoute.payloadSize(to: remote, namespace: config.networkNamespace)
        // A peer on this host has no bottleneck queue to keep short, and
        // cubic and reno give the gate no rate to hold bulk to.
        bulkGate = routePayload == nil && config.congestionControl.hasPacingRate
            ? config.bulkQueueAllowance.map { BulkQueueGate(allowance: $0) } : nil
        if let cap = config.hostLocalUDPPayloadSize, let routePayload {
            // A peer on this host: the loopback MTU is certain, nothing to
            // discover. A 4 KiB fault answer becomes one packet instead of
            // three, and bulk moves in fewer.
            settings.max_tx_udp_payload_size = max(config.maxUDPPayloadSize, min(cap, routePayload))
            settings.no_tx_udp_payload_size_shaping = 1
            settings.no_pmtud = 1
        }
        settings.handshake_timeout = config.handshakeTimeout.saturatingNanoseconds
        settings.max_window = window
        settings.max_stream_window = streamWindow
        switch config.congestionControl {
        case .cubic: settings.cc_algo = NGTCP2_CC_ALGO_CUBIC
        case .bbr: settings.cc_algo = NGTCP2_CC_ALGO_BBR2
        case .bbr1: settings.cc_algo = NGTCP2_CC_ALGO_BBR
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
        params.max_idle_timeout = config.livenessTimeout.saturatingNanoseconds
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

    /// The GnuTLS session (ALPN, a ticket to resume with, early data: offered
    /// by a client, accepted by a server), tied to the new ngtcp2 connection
    /// `c`; on failure the connection is freed.
    private func startTLS(on c: OpaquePointer, user: UnsafeMutableRawPointer, resume: SessionTicket?,
                          earlyData: Bool) throws {
        var err = [CChar](repeating: 0, count: 256)
        let alpn = acceptedProtocols.map { strdup($0) }
        defer { alpn.forEach { free($0) } }
        let resumeData = resume?.session ?? []
        let tlsRC = alpn.map { UnsafePointer<CChar>($0) }.withUnsafeBufferPointer { list in
            resumeData.withUnsafeBufferPointer { data in
                qs_tls_session_new(tls, endpoint.tls.handle, isClient ? 0 : 1, list.baseAddress, list.count,
                                   nil, resume == nil ? nil : data.baseAddress, data.count, earlyData ? 1 : 0,
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
    func armKeepAlive() {
        guard let conn, let keepAlive = endpoint.configuration.keepAliveInterval else { return }
        // A keep-alive slower than the idle timeout would keep nothing
        // alive: ping at least twice per idle period.
        let interval = min(keepAlive, endpoint.configuration.livenessTimeout / 2)
        ngtcp2_conn_set_keep_alive_timeout(conn, interval.saturatingNanoseconds)
    }
}
