import Foundation

/// What a responder answers: a status, a content type and the whole body.
/// The body is an owned copy (a snapshot of a chunk, a JSON document):
/// nghttp3 and ngtcp2 send from it without copying, long after the
/// responder returned.
public struct HTTP3Response: Sendable {
    public var status: Int
    public var contentType: String
    /// Further header fields, lower-case names (HTTP/3 requires it).
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, contentType: String, headers: [(name: String, value: String)] = [], body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.headers = headers
        self.body = body
    }

    /// A plain-text answer, for errors: one line saying what was wrong.
    public static func text(_ status: Int, _ message: String,
                            headers: [(name: String, value: String)] = []) -> HTTP3Response {
        HTTP3Response(status: status, contentType: "text/plain; charset=utf-8", headers: headers,
                      body: Array((message + "\n").utf8))
    }
}
