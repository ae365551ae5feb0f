@testable import MemReplica
import QuicShim
@testable import MemReplicaHTTP3

/// Raw client stream bytes into nghttp3 as the peer sets it up
/// (HTTP3/HTTP3Connection.swift: the same settings, limits and request
/// stream type), each finished request answered by the peer's responder
/// and the answer written out through nghttp3. The input is a series of
/// pieces `selector:u8 length:u8 bytes`: the selector's low bits pick a
/// client stream (bidirectional 0, 4, 8, 12; control 2; QPACK encoder 6,
/// decoder 10), bit 3 ends it. For any bytes, nghttp3 refuses the
/// connection or carries on, every answer holds (`HTTP3Answers.check`), and
/// nothing crashes or trips the address sanitizer.
struct HTTP3StreamTarget: FuzzTarget {
    static let streams: [Int64] = [0, 4, 8, 12, 2, 6, 10, 0]

    mutating func run(_ input: [UInt8]) {
        let session = HTTP3FuzzSession(fixture: FuzzFixture.shared)
        guard let h3 = session.h3 else { fuzzFailure("nghttp3 set-up failed") }
        var i = 0
        while i + 2 <= input.count {
            let selector = input[i], length = Int(input[i + 1])
            let end = min(input.count, i + 2 + length)
            let bytes = Array(input[(i + 2)..<end])
            i = end
            let id = Self.streams[Int(selector & 7)]
            let consumed = bytes.withUnsafeBufferPointer {
                nghttp3_conn_read_stream(h3, id, $0.baseAddress, $0.count, selector & 8 != 0 ? 1 : 0)
            }
            guard consumed >= 0 else { return }  // nghttp3 ended the connection
            guard consumed <= bytes.count else { fuzzFailure("nghttp3 consumed \(consumed) of \(bytes.count) bytes") }
            session.answerFinishedRequests()
            guard session.drain() else { return }
        }
    }
}

/// One server-side nghttp3 connection, fed by the fuzzer, with requests
/// kept as the peer keeps them.
final class HTTP3FuzzSession {
    let fixture: FuzzFixture
    private(set) var h3: OpaquePointer?
    var requests: [Int64: HTTP3RequestStream] = [:]
    var finished: [Int64] = []
    private let vectors = UnsafeMutableBufferPointer<nghttp3_vec>.allocate(capacity: 16)

    init(fixture: FuzzFixture) {
        self.fixture = fixture
        var settings = nghttp3_settings()
        qs_h3_settings_default(&settings)
        settings.max_field_section_size = UInt64(HTTP3Limits.maxHeaderSectionBytes)
        var callbacks = Self.callbacks()
        var conn: OpaquePointer?
        guard qs_h3_conn_server_new(&conn, &callbacks, &settings, Unmanaged.passUnretained(self).toOpaque()) == 0, let conn else {
            return
        }
        h3 = conn
        nghttp3_conn_set_max_client_streams_bidi(conn, 100)
        nghttp3_conn_set_max_concurrent_streams(conn, HTTP3Limits.maxConcurrentRequests)
        // Our own control and QPACK streams, as the server opens them.
        guard nghttp3_conn_bind_control_stream(conn, 3) == 0, nghttp3_conn_bind_qpack_streams(conn, 7, 11) == 0 else {
            fuzzFailure("nghttp3 refused our control streams")
        }
    }

    deinit {
        if let h3 { nghttp3_conn_del(h3) }
        vectors.deallocate()
    }

    /// Answers each request whose stream ended, as the peer does.
    func answerFinishedRequests() {
        guard let h3 else { return }
        for id in finished {
            guard let request = requests[id], !request.dispatched else { continue }
            request.dispatched = true
            let peer = HTTP3Answers.peers[Int(id / 4) % HTTP3Answers.peers.count]
            let response = HTTP3Answers.answer(request, peer: peer, fixture: fixture)
            request.setBody(response.body)
            let fields = [(":status", String(response.status)), ("content-type", response.contentType),
                          ("content-length", String(response.body.count))] + response.headers.map { ($0.name, $0.value) }
            let names = fields.map { Array($0.0.utf8) }, values = fields.map { Array($0.1.utf8) }
            var nva: [nghttp3_nv] = []
            func submit(_ i: Int) -> Int32 {
                if i == names.count {
                    var reader = nghttp3_data_reader(read_data: Self.readBody)
                    return response.body.isEmpty
                        ? nghttp3_conn_submit_response(h3, id, nva, nva.count, nil)
                        : nghttp3_conn_submit_response(h3, id, nva, nva.count, &reader)
                }
                return names[i].withUnsafeBufferPointer { n in
                    values[i].withUnsafeBufferPointer { v in
                        nva.append(nghttp3_nv(name: UnsafeMutablePointer(mutating: n.baseAddress), value: UnsafeMutablePointer(mutating: v.baseAddress),
                                              namelen: n.count, valuelen: v.count, flags: UInt8(NGHTTP3_NV_FLAG_NONE)))
                        return submit(i + 1)
                    }
                }
            }
            _ = submit(0)
        }
        finished.removeAll()
    }

    /// Writes out everything nghttp3 has to send and acknowledges it at
    /// once (as if the client had it); false once nghttp3 failed.
    func drain() -> Bool {
        guard let h3 else { return false }
        for _ in 0..<1000 {
            var id: Int64 = -1
            var fin: Int32 = 0
            let count = nghttp3_conn_writev_stream(h3, &id, &fin, vectors.baseAddress, vectors.count)
            guard count >= 0 else { return false }
            if id < 0 { return true }
            let bytes = (0..<Int(count)).reduce(0) { $0 + vectors[$1].len }
            guard nghttp3_conn_add_write_offset(h3, id, bytes) == 0 else { return false }
            guard nghttp3_conn_add_ack_offset(h3, id, UInt64(bytes)) == 0 else { return false }
            if bytes == 0 && fin == 0 { return true }
        }
        fuzzFailure("nghttp3 never ran out of bytes to write")
    }

    private static func session(_ p: UnsafeMutableRawPointer?) -> HTTP3FuzzSession {
        Unmanaged<HTTP3FuzzSession>.fromOpaque(p!).takeUnretainedValue()
    }

    private static let readBody: nghttp3_read_data_callback = { _, id, vec, veccnt, flags, user, _ in
        let s = HTTP3FuzzSession.session(user)
        flags!.pointee |= UInt32(NGHTTP3_DATA_FLAG_EOF)
        guard let request = s.requests[id], let body = request.body, request.bodyOffset < body.count, veccnt > 0 else { return 0 }
        vec![0] = nghttp3_vec(base: body.baseAddress!.assumingMemoryBound(to: UInt8.self) + request.bodyOffset,
                              len: body.count - request.bodyOffset)
        request.bodyOffset = body.count
        return 1
    }

    private static func callbacks() -> nghttp3_callbacks {
        var cb = nghttp3_callbacks()
        cb.stream_close = { _, id, _, user, _ in
            HTTP3FuzzSession.session(user).requests[id] = nil
            return 0
        }
        cb.recv_data = { _, id, _, count, user, _ in
            guard let request = HTTP3FuzzSession.session(user).requests[id] else { return 0 }
            request.bodyBytesReceived += count
            return 0
        }
        cb.deferred_consume = { _, _, _, _, _ in 0 }
        cb.begin_headers = { _, id, user, _ in
            let s = HTTP3FuzzSession.session(user)
            s.requests[id] = HTTP3RequestStream(id: id, overLimit: s.requests.count >= HTTP3Limits.maxConcurrentRequests)
            return 0
        }
        cb.recv_header = { _, id, _, name, value, _, user, _ in
            let n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value)
            HTTP3FuzzSession.session(user).requests[id]?.add(name: UnsafeRawBufferPointer(start: n.base, count: n.len),
                                                             value: UnsafeRawBufferPointer(start: v.base, count: v.len))
            return 0
        }
        cb.end_stream = { _, id, user, _ in
            HTTP3FuzzSession.session(user).finished.append(id)
            return 0
        }
        return cb
    }
}
