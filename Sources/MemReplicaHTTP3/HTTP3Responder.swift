/// Answers the HTTP/3 requests of an endpoint that accepts ALPN `h3`. The
/// endpoint parses requests on its loop thread and calls this on a task
/// (so a slow answer never holds up packets); the answer goes back to the
/// loop to be sent. The seam between the QUIC layer and what the peer
/// serves: the endpoint knows nothing of regions or statistics.
public protocol HTTP3Responder: Sendable {
    func respond(to request: HTTP3Request) async -> HTTP3Response
}
