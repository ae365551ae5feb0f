import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
#if canImport(Glibc)
import Glibc
#endif

/// Ending a connection: what ngtcp2's failures and the peer's close mean
/// (`TransportError`), the CONNECTION_CLOSE we send, and the teardown.
extension QUICConnectionCore {
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
}
