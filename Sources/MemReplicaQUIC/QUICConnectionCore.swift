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
    package internal(set) var conn: OpaquePointer!
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
    /// Holds bulk streams to a short bottleneck queue while urgent ones
    /// send (nil: off, or a peer on this host).
    var bulkGate: BulkQueueGate?
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
    var receiveWindow: UInt64 = 0
    /// Bounds what this connection's frame readers hold: its receive window.
    /// Set with the window, before any stream exists.
    var frameAllowance: FrameAllowance?
    /// Server: why to close the connection as soon as the packet being
    /// read is done (a cap found over at handshake completion).
    var pendingRefusal: String?
    var closeErrorSnapshot: TransportError? { shared.closeErrorSnapshot }

    package var bytesSent: UInt64 = 0, bytesReceived: UInt64 = 0
    package var packetsSent: UInt64 = 0, packetsReceived: UInt64 = 0
    let startedAt = monotonicNanoseconds()
    /// ngtcp2 stops its handshake timer once TLS completes, but a client is
    /// connected only when the server confirms (it may still refuse our
    /// certificate), so the whole connect is bounded here.
    var handshakeDeadline: UInt64 {
        guard case .handshaking = state else { return UInt64.max }
        return startedAt + endpoint.configuration.handshakeTimeout.saturatingNanoseconds
    }
    var handshakeDuration: Duration?
    /// Initial and Handshake keys are gone: no datagram is padded any more.
    var isHandshakeConfirmed = false

    // Resumption and 0-RTT (loop thread).
    var sessionResumed = false
    var earlyDataOutcome = EarlyDataOutcome.notAttempted
    /// Client: bytes the caller asked to send first, on the first stream.
    var earlyRequest: [UInt8]?
    /// Client: the stream carrying `earlyRequest`, once opened.
    var earlyStream: QUICStreamCore?
    /// Client: the stream was opened under remembered server parameters so
    /// its bytes may go out in 0-RTT.
    var earlyStreamBeforeHandshake = false
    /// ngtcp2 installed 0-RTT keys: a client's TLS offered early data, a
    /// server's accepted it.
    var earlyKeysInstalled = false
    /// Server: handed to `accept` at 0-RTT, before the handshake completed.
    var deliveredEarly = false

    var isClosed: Bool { if case .closed = state { return true } else { return false } }
    package var closeError: TransportError? { if case .closed(let e) = state { return e } else { return nil } }

    init(endpoint: QUICEndpoint, isClient: Bool, remote: SocketAddressStorage) {
        self.endpoint = endpoint
        shared = ConnectionSharedState(budget: endpoint.memoryBudget,
                                       receiveWindow: endpoint.configuration.connectionReceiveWindow)
        self.isClient = isClient
        self.remote = remote
        self.remoteAddress = PeerAddress(storage: remote)
        tls = .allocate(capacity: 1)
        tls.initialize(to: qs_tls_session())
    }

    /// Calls body with this connection's path (local socket, remote peer).
    func withPath<R>(_ body: (UnsafePointer<ngtcp2_path>) -> R) -> R {
        endpoint.localStorage.withPacketSockaddr { local, localLen in
            remote.withPacketSockaddr { rem, remLen in
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
        if rc == NGTCP2_ERR_RETRY, !isClient {
            // The client's first Initial came without the start of its
            // ClientHello (a resumed one with a certificate in its ticket
            // spans two packets, and the first was lost). ngtcp2 buffers
            // such data only from a validated address: answer with a Retry,
            // whose token makes the client send it all again, and forget
            // this attempt without a CONNECTION_CLOSE.
            endpoint.answerWithRetry(packet, from: remote, now: now)
            finish(.protocolFailure("the client's first Initial lacked the start of its ClientHello"))
        } else if rc != 0 {
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

    deinit {
        // A connection whose creation failed part way never reached `finish`.
        endpoint.memoryBudget.releaseReceiveWindow(receiveWindow)
        tls.deinitialize(count: 1)
        tls.deallocate()
    }

    /// Connection credit bulk streams leave to urgent ones
    /// (`SendScheduler.urgentCreditReserve`), from the peer's window.
    var urgentCreditReserve: UInt64 {
        guard let params = ngtcp2_conn_get_remote_transport_params(conn) else { return 0 }
        return SendScheduler<QUICStreamCore>.urgentCreditReserve(peerWindow: params.pointee.initial_max_data)
    }

    /// Credit a bulk stream may still use: what the peer's connection
    /// window has left beyond the urgent streams' reserve.
    var bulkCreditLeft: UInt64 {
        let left = ngtcp2_conn_get_max_data_left(conn)
        let reserve = urgentCreditReserve
        return left > reserve ? left - reserve : 0
    }

    /// When the peer last acknowledged stream bytes on this connection.
    var lastSendProgress = monotonicNanoseconds()

    /// Resets the streams whose peer took none of their bytes for `timeout` ns.
    /// A stream counts as stalled only while the peer holds it back: its
    /// bytes are all sent and not acknowledged, or its flow-control credit
    /// is spent, or the connection's is and the peer took nothing on any
    /// stream for as long. One that waits its turn behind the connection's
    /// other streams (1024 regions' initial syncs on one connection, with
    /// the peer reading them all) is not the peer's doing: its clock
    /// starts again.
    func resetStalledStreams(now: UInt64, after timeout: UInt64) {
        guard case .established = state else { return }
        let connectionHeld = bulkCreditLeft == 0
            && now >= lastSendProgress && now - lastSendProgress >= timeout
        for stream in Array(streams.values) where !stream.closedByStack {
            if !connectionHeld && stream.hasUnsentBytes && ngtcp2_conn_get_max_stream_data_left(conn, stream.id) > 0 {
                stream.waitingItsTurn(now: now)
                continue
            }
            guard stream.isStalled(now: now, after: timeout) else { continue }
            endpoint.logger.info("resetting a stream whose peer stopped reading",
                                 metadata: ["peer": "\(remoteAddress)", "stream": "\(stream.id)",
                                            "stream_credit_left": "\(ngtcp2_conn_get_max_stream_data_left(conn, stream.id))",
                                            "connection_credit_left": "\(ngtcp2_conn_get_max_data_left(conn))",
                                            "unsent": "\(stream.sendBuffer.unsent)",
                                            "unacknowledged": "\(stream.sendBuffer.unacknowledged)"])
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

    /// What the congestion controller lets this connection send, bytes per
    /// second: bbr's pacing rate; cubic and reno set none in ngtcp2 0.12,
    /// so their window over the smoothed RTT.
    func sendRate() -> Double? {
        guard let conn, !isClosed else { return nil }
        var cs = ngtcp2_conn_stat()
        qs_conn_get_conn_stat(conn, &cs)
        if cs.pacing_rate > 0 { return cs.pacing_rate * 1e9 }
        guard cs.smoothed_rtt > 0, cs.cwnd > 0 else { return nil }
        return Double(cs.cwnd) / (Double(cs.smoothed_rtt) / 1e9)
    }

    package func statistics() -> ConnectionStatistics {
        var s = ConnectionStatistics()
        s.bytesSent = bytesSent; s.bytesReceived = bytesReceived
        s.packetsSent = packetsSent; s.packetsReceived = packetsReceived
        s.handshakeDuration = handshakeDuration
        s.sessionResumed = sessionResumed
        s.earlyData = earlyDataOutcome
        s.congestionControl = endpoint.configuration.congestionControl.rawValue
        s.bulkQueueHeld = bulkGate.map { .nanoseconds(Int64(clamping: $0.heldNanoseconds)) }
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
