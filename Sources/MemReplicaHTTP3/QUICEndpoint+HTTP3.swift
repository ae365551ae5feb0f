import MemReplicaQUIC
/// The HTTP/3 face: ALPN `h3` on the endpoint's own UDP port, under the
/// same mutual TLS as memreplica connections.
extension QUICEndpoint {
    /// From now on, inbound connections may choose ALPN `h3` next to the
    /// configured protocols; their requests go to `responder` and they are
    /// never handed to `accept`.
    public func serveHTTP3(_ responder: any HTTP3Responder) async {
        await onLoop { [self] in http3Responder = responder }
    }
}
