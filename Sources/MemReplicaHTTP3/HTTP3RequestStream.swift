import MemReplicaTransportCore
/// One request stream of an HTTP/3 connection (loop thread): the request
/// head as it arrives, then the response body nghttp3 sends from.
final class HTTP3RequestStream {
    let id: Int64
    private(set) var method: String?
    private(set) var path: String?
    private var headerBytes = 0
    /// Set when the head broke a limit; the request is answered with it.
    private(set) var rejection: HTTP3Response?
    var bodyBytesReceived = 0
    /// Handed to the responder (or answered): later events are ignored.
    var dispatched = false
    /// The response body, owned here until nghttp3 closes the stream:
    /// nghttp3 and ngtcp2 keep pointers into it until it is acknowledged.
    private(set) var body: UnsafeMutableRawBufferPointer?
    /// How much of `body` nghttp3 has taken.
    var bodyOffset = 0

    init(id: Int64, overLimit: Bool) {
        self.id = id
        if overLimit {
            rejection = .text(503, "too many concurrent requests on this connection (limit \(HTTP3Limits.maxConcurrentRequests))",
                              headers: [("retry-after", "1")])
        }
    }

    deinit { body?.deallocate() }

    /// One header field; pseudo-headers other than :method and :path
    /// (:scheme, :authority) need no answer from a server of one origin.
    func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        headerBytes += name.count + value.count + 32
        guard rejection == nil else { return }
        if headerBytes > HTTP3Limits.maxHeaderSectionBytes {
            rejection = .text(431, "request header section over \(HTTP3Limits.maxHeaderSectionBytes) bytes")
            return
        }
        if name.elementsEqual(":method".utf8) {
            method = String(decoding: value, as: UTF8.self)
        } else if name.elementsEqual(":path".utf8) {
            if value.count > HTTP3Limits.maxPathBytes {
                rejection = .text(414, "request target over \(HTTP3Limits.maxPathBytes) bytes")
            } else {
                path = String(decoding: value, as: UTF8.self)
            }
        }
    }

    /// The request to hand to the responder, or the answer that refuses it.
    func request(from peer: PeerIdentity) -> Result<HTTP3Request, RejectedRequest> {
        if let rejection { return .failure(RejectedRequest(response: rejection)) }
        guard let method, let path, path.hasPrefix("/") else {
            return .failure(RejectedRequest(response: .text(400, "a request needs :method and an absolute :path")))
        }
        return .success(HTTP3Request(method: method, path: path, peer: peer))
    }

    /// Keeps a copy of `bytes` for nghttp3 to send from.
    func setBody(_ bytes: [UInt8]) {
        body?.deallocate()
        body = nil
        bodyOffset = 0
        guard !bytes.isEmpty else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        buffer.copyBytes(from: bytes)
        body = buffer
    }

    /// A response that refuses a request before the responder sees it.
    struct RejectedRequest: Error {
        let response: HTTP3Response
    }
}
