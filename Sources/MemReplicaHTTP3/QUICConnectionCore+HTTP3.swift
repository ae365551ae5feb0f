import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import QuicShim

/// Where a connection and the HTTP/3 face meet (loop thread).
extension QUICConnectionCore {
    /// What this side offers (client) or accepts (server) in ALPN: a
    /// server whose endpoint serves HTTP/3 accepts `h3` too; a client only
    /// ever asks for memreplica.
    var acceptedProtocols: [String] {
        let configured = endpoint.configuration.applicationProtocols
        guard !isClient, endpoint.http3Responder != nil else { return configured }
        return configured + [HTTP3Connection.alpn]
    }

    /// Called as a server installs keys past Initial: TLS has chosen the
    /// ALPN by then. For `h3`, sets up nghttp3 before any request arrives.
    func applicationProtocolKnown() -> Bool {
        guard !isClient, http3 == nil, let responder = endpoint.http3Responder else { return true }
        var alpn = [CChar](repeating: 0, count: 64)
        guard qs_tls_selected_alpn(tls, &alpn, alpn.count) == 0,
              stringFromCBuffer(alpn) == HTTP3Connection.alpn else { return true }
        do {
            http3 = try HTTP3Connection(core: self, responder: responder)
            return true
        } catch {
            callbackError = error as? TransportError ?? .protocolFailure("\(error)")
            return false
        }
    }
}
