import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
#if canImport(Glibc)
import Glibc
#endif

/// The handshake as ngtcp2 reports it (called from `QUICCallbacks`): the
/// peer's certificate and ALPN, completion and confirmation, 0-RTT.
extension QUICConnectionCore {

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
    func earlyDataAccepted() -> Bool {
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
}
