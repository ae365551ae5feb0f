import MemReplicaTransportCore
import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

/// Maps OpenSSL failures to the transport's named errors, the same cases
/// the QUIC transport reports for the same situations: an alert from the
/// peer says it refused us (or our ALPN, or our missing certificate); a
/// failed verification on our side says we refused it.
enum OpenSSLFailure {
    /// What a failed OpenSSL call on `ssl` means, in the transport's named
    /// errors (read the thread's error queue before anything clears it).
    static func error(of ssl: OpaquePointer, during what: String, offered: [String]) -> TransportError {
        let code = ERR_peek_last_error()
        let reason = Int32(code & 0x7f_ffff)
        let library = Int32((code >> 23) & 0xff)
        if code == 0 {
            let e = errno
            return .connectionLost(detail: e == 0 ? "the peer closed the TCP connection during \(what)"
                                                  : "\(String(cString: strerror(e))) during \(what)")
        }
        if library == ERR_LIB_SSL && reason > SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256 {
            // The peer sent a fatal alert.
            let alert = UInt8(reason - SSL_AD_REASON_OFFSET)
            switch alert {
            case 116: return .clientCertificateMissing
            case 120: return .alpnMismatch(offered: offered)
            case 42, 43, 44, 45, 46, 48, 49: return .rejectedByPeer(reason: tlsAlertName(alert))
            default: return .tlsFailure("peer sent alert \(tlsAlertName(alert))")
            }
        }
        let verify = SSL_get_verify_result(ssl)
        if verify != X509_V_OK {
            return .untrustedPeer(reason: String(cString: X509_verify_cert_error_string(verify)))
        }
        if library == ERR_LIB_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING {
            return .connectionLost(detail: "the peer ended the TCP connection without a CLOSE record")
        }
        if library == ERR_LIB_SSL && reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE {
            return .clientCertificateMissing
        }
        if library == ERR_LIB_SSL && reason == SSL_R_NO_APPLICATION_PROTOCOL {
            return .alpnMismatch(offered: offered)
        }
        return .tlsFailure(OpenSSLContext.errorString())
    }
}
