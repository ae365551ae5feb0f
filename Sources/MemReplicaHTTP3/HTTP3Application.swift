import MemReplicaQUIC

/// HTTP/3 as a QUIC application protocol: ALPN `h3` on the endpoint's own
/// UDP port, under the same mutual TLS as memreplica connections.
struct HTTP3Application: QUICApplication {
    let responder: any HTTP3Responder
    var alpn: String { HTTP3Connection.alpn }
    /// A client opens its control and two QPACK streams.
    var peerUnidirectionalStreams: UInt64 { 3 }

    func session(on core: QUICConnectionCore) throws -> any QUICApplicationSession {
        try HTTP3Connection(core: core, responder: responder)
    }
}

extension QUICEndpoint {
    /// From now on, inbound connections may choose ALPN `h3` next to the
    /// configured protocols; their requests go to `responder` and they are
    /// never handed to `accept`.
    public func serveHTTP3(_ responder: any HTTP3Responder) async {
        await serve(HTTP3Application(responder: responder))
    }
}
