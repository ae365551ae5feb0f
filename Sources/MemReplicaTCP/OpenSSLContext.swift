import MemReplicaSystem
import MemReplicaTransportCore
import COpenSSL
import Foundation

/// The OpenSSL side of the TCP transport: one client and one server
/// SSL_CTX with the same trust and certificate as the QUIC transport's
/// GnuTLS credentials. TLS 1.3 only, mutual authentication required
/// (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT), ALPN required.
/// Immutable after init; SSL objects made from it live on one loop thread.
final class OpenSSLContext: @unchecked Sendable {
    let client: OpaquePointer
    let server: OpaquePointer
    let applicationProtocols: [String]
    /// Our certificate's identity (empty subject when we have none).
    let localIdentity: PeerIdentity
    /// ALPN list in wire format (length-prefixed names), read by the
    /// server's selection callback.
    private let alpnWire: UnsafeMutableBufferPointer<UInt8>

    init(_ configuration: TLSConfiguration, applicationProtocols: [String]) throws {
        self.applicationProtocols = applicationProtocols
        var wire: [UInt8] = []
        for p in applicationProtocols {
            let bytes = Array(p.utf8)
            guard (1...255).contains(bytes.count) else {
                throw TransportError.tlsConfiguration("ALPN name '\(p)' must be 1 to 255 bytes")
            }
            wire.append(UInt8(bytes.count))
            wire.append(contentsOf: bytes)
        }
        alpnWire = .allocate(capacity: max(wire.count, 1))
        _ = alpnWire.initialize(from: wire)
        let alpnCount = wire.count
        var made: [OpaquePointer] = []
        do {
            let client = try Self.makeContext(TLS_client_method(), configuration)
            made.append(client)
            let server = try Self.makeContext(TLS_server_method(), configuration)
            made.append(server)
            guard SSL_CTX_set_alpn_protos(client, alpnWire.baseAddress, UInt32(alpnCount)) == 0 else {
                throw TransportError.tlsConfiguration("setting ALPN: \(Self.errorString())")
            }
            self.client = client
            self.server = server
        } catch {
            made.forEach { SSL_CTX_free($0) }
            alpnWire.deallocate()
            throw error
        }
        if let cert = SSL_CTX_get0_certificate(client), let identity = Self.identity(of: cert) {
            localIdentity = identity
        } else {
            localIdentity = .none
        }
        SSL_CTX_set_alpn_select_cb(server, { _, out, outLength, offered, offeredLength, arg in
            guard let arg, let offered, let out, let outLength else { return SSL_TLSEXT_ERR_ALERT_FATAL }
            let context = Unmanaged<OpenSSLContext>.fromOpaque(arg).takeUnretainedValue()
            var selected: UnsafeMutablePointer<UInt8>?
            var selectedLength: UInt8 = 0
            let ours = context.alpnWire
            let rc = SSL_select_next_proto(&selected, &selectedLength, ours.baseAddress,
                                           UInt32(context.applicationProtocols.isEmpty ? 0 : ours.count),
                                           offered, offeredLength)
            guard rc == OPENSSL_NPN_NEGOTIATED, let selected else { return SSL_TLSEXT_ERR_ALERT_FATAL }
            out.pointee = UnsafePointer(selected)
            outLength.pointee = selectedLength
            return SSL_TLSEXT_ERR_OK
        }, Unmanaged.passUnretained(self).toOpaque())
        // Resumed sessions (a TCP connection per stream) need a session ID
        // context once client certificates are verified.
        let sid = Array("memreplica".utf8)
        _ = SSL_CTX_set_session_id_context(server, sid, UInt32(sid.count))
        // Clients keep the tickets themselves, per logical connection.
        _ = SSL_CTX_ctrl(client, SSL_CTRL_SET_SESS_CACHE_MODE,
                         Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE), nil)
        SSL_CTX_sess_set_new_cb(client) { ssl, session in
            guard let ssl, let session, let raw = SSL_get_ex_data(ssl, 0) else { return 0 }
            return Unmanaged<TCPLink>.fromOpaque(raw).takeUnretainedValue().storeSession(session) ? 1 : 0
        }
    }

    deinit {
        SSL_CTX_free(client)
        SSL_CTX_free(server)
        alpnWire.deallocate()
    }

    private static func makeContext(_ method: OpaquePointer?, _ configuration: TLSConfiguration) throws -> OpaquePointer {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(method) else {
            throw TransportError.tlsConfiguration("SSL_CTX_new: \(errorString())")
        }
        do {
            guard SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_3_VERSION), nil) == 1 else {
                throw TransportError.tlsConfiguration("requiring TLS 1.3: \(errorString())")
            }
            guard SSL_CTX_load_verify_locations(ctx, configuration.caFile, nil) == 1 else {
                throw TransportError.tlsConfiguration("CA file \(configuration.caFile): \(errorString())")
            }
            // A context without its own certificate exists only so tests can
            // show that a server refuses such a client.
            if let cert = configuration.certificateFile, let key = configuration.keyFile {
                guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1,
                      SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1,
                      SSL_CTX_check_private_key(ctx) == 1 else {
                    throw TransportError.tlsConfiguration("certificate \(cert) / key \(key): \(errorString())")
                }
            }
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            // Partial writes: SSL_write returns after what the socket took,
            // and the unsent rest may be offered again from a moved buffer.
            _ = SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER), nil)
            // Read ahead: one read(2) takes many TLS records, not two calls
            // (header, body) per 16 KiB record.
            _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_READ_AHEAD, 1, nil)
            SSL_CTX_set_default_read_buffer_len(ctx, 128 << 10)
            return ctx
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
    }

    /// A new SSL object for one TCP connection, tied to `fd`.
    func makeSSL(server isServer: Bool, fd: Int32) throws -> OpaquePointer {
        guard let ssl = SSL_new(isServer ? server : client) else {
            throw TransportError.tlsFailure("SSL_new: \(Self.errorString())")
        }
        SSL_set_fd(ssl, fd)
        if isServer { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
        return ssl
    }

    /// The certificate's identity: OpenSSL only hands over the DER bytes,
    /// which `PeerIdentity(certificate:)` parses as it does for QUIC.
    static func identity(of cert: OpaquePointer) -> PeerIdentity? {
        let length = i2d_X509(cert, nil)
        guard length > 0 else { return nil }
        var der = [UInt8](repeating: 0, count: Int(length))
        der.withUnsafeMutableBufferPointer { buffer in
            var p = buffer.baseAddress
            _ = i2d_X509(cert, &p)
        }
        return PeerIdentity(certificate: der)
    }

    /// The last error on this thread's OpenSSL error queue, as text.
    static func errorString() -> String {
        let code = ERR_peek_last_error()
        guard code != 0 else { return "no detail from OpenSSL" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return stringFromCBuffer(buffer)
    }
}
