/// Bounds on what one HTTP/3 client may make the peer hold. A request that
/// exceeds one is answered with the matching status, not served.
public enum HTTP3Limits {
    /// Header section of a request (names + values + 32 bytes each, as
    /// RFC 9114 §4.2.2 counts): also announced in SETTINGS so clients know.
    /// Beyond it: 431.
    public static let maxHeaderSectionBytes = 16 << 10
    /// Request target length. Beyond it: 414.
    public static let maxPathBytes = 1024
    /// Requests open at once on one connection (a response holds up to a
    /// chunk, at most 1 MiB, until the client acknowledges it). A request
    /// beyond it is answered 503 with Retry-After.
    public static let maxConcurrentRequests = 16
    /// Request body bytes read before the request is answered anyway: the
    /// face is read-only and no route takes a body (its method gets 405),
    /// so a client streaming one gets its answer without waiting for the
    /// end. Body bytes are dropped as they arrive, never buffered.
    public static let maxRequestBodyBytes = 64 << 10
}
