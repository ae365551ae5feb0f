import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore

/// Where a connection and an application protocol (`QUICApplication`)
/// meet (loop thread).
extension QUICConnectionCore {
    /// What this side offers (client) or accepts (server) in ALPN: a
    /// server accepts the ALPN of every application its endpoint serves
    /// too; a client only ever asks for the configured protocols.
    var acceptedProtocols: [String] {
        let configured = endpoint.configuration.applicationProtocols
        guard !isClient, !endpoint.applications.isEmpty else { return configured }
        return configured + endpoint.applications.keys.sorted()
    }

    /// Called as a server installs keys past Initial: TLS has chosen the
    /// ALPN by then. For an application's ALPN, sets up its session before
    /// any request arrives.
    func applicationProtocolKnown() -> Bool {
        guard !isClient, application == nil, !endpoint.applications.isEmpty else { return true }
        var alpn = [CChar](repeating: 0, count: 64)
        guard qs_tls_selected_alpn(tls, &alpn, alpn.count) == 0,
              let chosen = endpoint.applications[stringFromCBuffer(alpn)] else { return true }
        do {
            application = try chosen.session(on: self)
            return true
        } catch {
            callbackError = error as? TransportError ?? .protocolFailure("\(error)")
            return false
        }
    }
}
