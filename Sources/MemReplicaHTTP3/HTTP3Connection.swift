import QuicShim
import MemReplicaQUIC
import MemReplicaTransportCore
import Logging

/// The HTTP/3 side of one QUIC connection that negotiated ALPN `h3`: the
/// nghttp3 state, confined like the connection to the endpoint's loop
/// thread (nghttp3 is not thread-safe). Requests are parsed here, answered
/// by the endpoint's `HTTP3Responder` on a task, and each answer is posted
/// back to the loop to be submitted. The writer is in
/// `HTTP3Connection+Write.swift`.
final class HTTP3Connection: QUICApplicationSession, @unchecked Sendable {
    static let alpn = "h3"

    /// Weak: the connection owns this, and drops it in `close`.
    private(set) weak var core: QUICConnectionCore?
    let endpoint: QUICEndpoint
    let responder: any HTTP3Responder
    private(set) var h3: OpaquePointer?
    private var requests: [Int64: HTTP3RequestStream] = [:]
    /// Scratch for nghttp3_conn_writev_stream.
    let vectors: UnsafeMutableBufferPointer<nghttp3_vec>
    private(set) var closed = false
    /// The HTTP/3 error code to close the connection with, once nghttp3
    /// returned a fatal error (the connection closes with it).
    private(set) var failureCode: UInt64?
    /// HTTP/3 has no code 0 (RFC 9114 §8.1).
    var noErrorCode: UInt64 { UInt64(NGHTTP3_H3_NO_ERROR) }

    init(core: QUICConnectionCore, responder: any HTTP3Responder) throws {
        self.core = core
        endpoint = core.endpoint
        self.responder = responder
        vectors = .allocate(capacity: 16)
        var settings = nghttp3_settings()
        qs_h3_settings_default(&settings)
        settings.max_field_section_size = UInt64(HTTP3Limits.maxHeaderSectionBytes)
        var callbacks = Self.callbacks()
        var conn: OpaquePointer?
        let rc = qs_h3_conn_server_new(&conn, &callbacks, &settings, Unmanaged.passUnretained(self).toOpaque())
        guard rc == 0, let conn else {
            // Every property is set: deinit runs and frees `vectors`.
            throw TransportError.protocolFailure("HTTP/3 set-up: \(String(cString: nghttp3_strerror(rc)))")
        }
        h3 = conn
        if let params = ngtcp2_conn_get_local_transport_params(core.conn) {
            nghttp3_conn_set_max_client_streams_bidi(conn, params.pointee.initial_max_streams_bidi)
        }
        nghttp3_conn_set_max_concurrent_streams(conn, HTTP3Limits.maxConcurrentRequests)
    }

    deinit {
        if let h3 { nghttp3_conn_del(h3) }
        vectors.deallocate()
    }

    /// The handshake completed: open our control and QPACK streams.
    func start() -> Bool {
        guard let core, let h3 else { return false }
        var control: Int64 = -1, encoder: Int64 = -1, decoder: Int64 = -1
        guard ngtcp2_conn_open_uni_stream(core.conn, &control, nil) == 0,
              nghttp3_conn_bind_control_stream(h3, control) == 0,
              ngtcp2_conn_open_uni_stream(core.conn, &encoder, nil) == 0,
              ngtcp2_conn_open_uni_stream(core.conn, &decoder, nil) == 0,
              nghttp3_conn_bind_qpack_streams(h3, encoder, decoder) == 0 else {
            // The usual cause: the client allows us fewer than 3.
            core.callbackError = .protocolFailure("HTTP/3: cannot open the control and QPACK streams")
            return false
        }
        endpoint.logger.info("HTTP/3 client connected",
                             metadata: ["peer": "\(core.remoteAddress)", "identity": "\(core.peerIdentity)"])
        return true
    }

    /// The connection ended: nothing more is sent, answers still being
    /// made are dropped when they arrive.
    func close() {
        closed = true
        requests.removeAll()
        if let h3 { nghttp3_conn_del(h3) }
        h3 = nil
    }

    // MARK: from ngtcp2's callbacks (see QUICCallbacks)

    /// Stream bytes from the client, for nghttp3 to parse.
    func receive(stream id: Int64, _ data: UnsafePointer<UInt8>?, _ count: Int, fin: Bool) -> Int32 {
        guard let h3 else { return 0 }
        let consumed = nghttp3_conn_read_stream(h3, id, data, count, fin ? 1 : 0)
        guard consumed >= 0 else { return failed(Int32(consumed)) }
        giveCredit(stream: id, Int(consumed))
        return 0
    }

    /// Records why nghttp3 failed (for the log and the CONNECTION_CLOSE
    /// code) and returns what makes ngtcp2 end the connection.
    func failed(_ liberr: Int32) -> Int32 {
        failureCode = nghttp3_err_infer_quic_app_error_code(liberr)
        core?.callbackError = .protocolFailure("HTTP/3: \(String(cString: nghttp3_strerror(liberr)))")
        return NGTCP2_ERR_CALLBACK_FAILURE
    }

    /// Flow-control credit for bytes nghttp3 took (frame headers, QPACK,
    /// control streams) or that we dropped (request bodies).
    private func giveCredit(stream id: Int64, _ count: Int) {
        guard count > 0, let core, let conn = core.conn else { return }
        ngtcp2_conn_extend_max_stream_offset(conn, id, UInt64(count))
        ngtcp2_conn_extend_max_offset(conn, UInt64(count))
    }

    func acknowledged(stream id: Int64, _ count: UInt64) -> Int32 {
        guard let h3 else { return 0 }
        let rc = nghttp3_conn_add_ack_offset(h3, id, count)
        return rc == 0 ? 0 : failed(rc)
    }

    func streamClosed(_ id: Int64, appErrorCode: UInt64?) -> Int32 {
        guard let h3, let core else { return 0 }
        let rc = nghttp3_conn_close_stream(h3, id, appErrorCode ?? UInt64(NGHTTP3_H3_NO_ERROR))
        // NOT_FOUND: a stream nghttp3 never saw data on (reset at once).
        if rc != 0 && rc != NGHTTP3_ERR_STREAM_NOT_FOUND { return failed(rc) }
        requests[id] = nil
        // A request stream's slot goes back to the client as it closes.
        if ngtcp2_conn_is_local_stream(core.conn, id) == 0 && id & 0x2 == 0 {
            ngtcp2_conn_extend_max_streams_bidi(core.conn, 1)
        }
        return 0
    }

    /// The client reset its side, or asked us to stop sending (ngtcp2
    /// then resets ours): nghttp3 stops reading the stream; its request,
    /// if answered late, is dropped when the stream closes.
    func streamAborted(_ id: Int64) {
        guard let h3 else { return }
        _ = nghttp3_conn_shutdown_stream_read(h3, id)
    }

    func flowCreditAvailable(_ id: Int64) {
        guard let h3 else { return }
        _ = nghttp3_conn_unblock_stream(h3, id)
    }

    func peerStreamLimitRaised(to max: UInt64) {
        guard let h3 else { return }
        nghttp3_conn_set_max_client_streams_bidi(h3, max)
    }

    // MARK: requests (nghttp3's callbacks)

    private func beginRequest(_ id: Int64) {
        requests[id] = HTTP3RequestStream(id: id, overLimit: requests.count >= HTTP3Limits.maxConcurrentRequests)
    }

    private func header(_ id: Int64, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        requests[id]?.add(name: name, value: value)
    }

    private func bodyReceived(_ id: Int64, _ count: Int) -> Int32 {
        giveCredit(stream: id, count)
        guard let request = requests[id] else { return 0 }
        request.bodyBytesReceived += count
        // No route takes a body; past a bound it is not worth reading
        // before answering.
        if request.bodyBytesReceived > HTTP3Limits.maxRequestBodyBytes, !request.dispatched {
            dispatch(request)
        }
        return 0
    }

    /// The request is complete: answer at once if it broke a limit, else
    /// ask the responder on a task and submit its answer on the loop.
    private func dispatch(_ request: HTTP3RequestStream) {
        guard !request.dispatched, let core else { return }
        request.dispatched = true
        switch request.request(from: core.peerIdentity) {
        case .failure(let rejected):
            submit(rejected.response, to: request)
        case .success(let parsed):
            // Stream IDs are never reused on a connection: the ID finds
            // this request again, if it is still open when the answer comes.
            let responder = self.responder, id = request.id
            Task {
                let response = await responder.respond(to: parsed)
                self.endpoint.post { [self] in
                    guard !closed, let core = self.core, let request = requests[id] else { return }
                    submit(response, to: request)
                    endpoint.needsWrite(core)
                }
            }
        }
    }

    private func submit(_ response: HTTP3Response, to request: HTTP3RequestStream) {
        guard let h3 else { return }
        request.setBody(response.body)
        var fields: [(String, String)] = [(":status", String(response.status)),
                                          ("content-type", response.contentType),
                                          ("content-length", String(response.body.count)),
                                          // Counters and chunk bytes change under the client.
                                          ("cache-control", "no-store")]
        fields += response.headers.map { ($0.name, $0.value) }
        let names = fields.map { Array($0.0.utf8) }, values = fields.map { Array($0.1.utf8) }
        let rc = withFields(names: names, values: values) { nva in
            var reader = nghttp3_data_reader(read_data: HTTP3Connection.readBody)
            return response.body.isEmpty
                ? nghttp3_conn_submit_response(h3, request.id, nva.baseAddress, nva.count, nil)
                : nghttp3_conn_submit_response(h3, request.id, nva.baseAddress, nva.count, &reader)
        }
        if rc != 0 {
            endpoint.logger.debug("HTTP/3 response not submitted: \(String(cString: nghttp3_strerror(rc)))",
                                  metadata: ["stream": "\(request.id)"])
        }
    }

    /// nghttp3 copies the fields on submit, so pointers into these arrays
    /// only need to live for the call.
    private func withFields(names: [[UInt8]], values: [[UInt8]], _ body: (UnsafeBufferPointer<nghttp3_nv>) -> Int32) -> Int32 {
        var nva: [nghttp3_nv] = []
        func build(_ i: Int) -> Int32 {
            if i == names.count { return nva.withUnsafeBufferPointer(body) }
            return names[i].withUnsafeBufferPointer { n in
                values[i].withUnsafeBufferPointer { v in
                    nva.append(nghttp3_nv(name: UnsafeMutablePointer(mutating: n.baseAddress), value: UnsafeMutablePointer(mutating: v.baseAddress),
                                          namelen: n.count, valuelen: v.count, flags: UInt8(NGHTTP3_NV_FLAG_NONE)))
                    return build(i + 1)
                }
            }
        }
        return build(0)
    }

    // MARK: nghttp3 callback table

    private static func connection(_ p: UnsafeMutableRawPointer?) -> HTTP3Connection {
        Unmanaged<HTTP3Connection>.fromOpaque(p!).takeUnretainedValue()
    }

    /// Hands nghttp3 the whole remaining body in one vector.
    private static let readBody: nghttp3_read_data_callback = { _, id, vec, veccnt, flags, user, _ in
        let h = HTTP3Connection.connection(user)
        flags!.pointee |= UInt32(NGHTTP3_DATA_FLAG_EOF)
        guard let request = h.requests[id], let body = request.body, request.bodyOffset < body.count, veccnt > 0 else { return 0 }
        vec![0] = nghttp3_vec(base: body.baseAddress!.assumingMemoryBound(to: UInt8.self) + request.bodyOffset,
                              len: body.count - request.bodyOffset)
        request.bodyOffset = body.count
        return 1
    }

    private static func callbacks() -> nghttp3_callbacks {
        var cb = nghttp3_callbacks()
        cb.stream_close = { _, id, _, user, _ in
            HTTP3Connection.connection(user).requests[id] = nil
            return 0
        }
        cb.recv_data = { _, id, _, count, user, _ in
            HTTP3Connection.connection(user).bodyReceived(id, count)
        }
        cb.deferred_consume = { _, id, count, user, _ in
            HTTP3Connection.connection(user).giveCredit(stream: id, count)
            return 0
        }
        cb.begin_headers = { _, id, user, _ in
            HTTP3Connection.connection(user).beginRequest(id)
            return 0
        }
        cb.recv_header = { _, id, _, name, value, _, user, _ in
            let n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value)
            HTTP3Connection.connection(user).header(id, name: UnsafeRawBufferPointer(start: n.base, count: n.len),
                                                    value: UnsafeRawBufferPointer(start: v.base, count: v.len))
            return 0
        }
        cb.end_stream = { _, id, user, _ in
            let h = HTTP3Connection.connection(user)
            if let request = h.requests[id] { h.dispatch(request) }
            return 0
        }
        cb.stop_sending = { _, id, code, user, _ in
            guard let conn = HTTP3Connection.connection(user).core?.conn else { return 0 }
            _ = ngtcp2_conn_shutdown_stream_read(conn, id, code)
            return 0
        }
        cb.reset_stream = { _, id, code, user, _ in
            guard let conn = HTTP3Connection.connection(user).core?.conn else { return 0 }
            _ = ngtcp2_conn_shutdown_stream_write(conn, id, code)
            return 0
        }
        return cb
    }
}
