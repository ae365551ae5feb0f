#if canImport(Glibc)
import Glibc
#endif

/// The kernel's view of one TCP connection (TCP_INFO). Glibc's
/// `struct tcp_info` stops before the byte and segment counters, so the
/// fields are read at their offsets in Linux's `struct tcp_info` (stable ABI;
/// a kernel that returns fewer bytes leaves the later fields zero).
struct TCPInfo {
    var backoff = 0
    var mss: UInt64 = 0
    var unackedSegments: UInt64 = 0
    var rttMicroseconds: UInt64 = 0
    var rttVarianceMicroseconds: UInt64 = 0
    var ssthreshSegments: UInt64 = 0
    var cwndSegments: UInt64 = 0
    var pacingRate: UInt64 = 0
    var bytesReceived: UInt64 = 0
    var segmentsOut: UInt64 = 0
    var segmentsIn: UInt64 = 0
    var minRTTMicroseconds: UInt64 = 0
    var deliveryRate: UInt64 = 0
    var bytesSent: UInt64 = 0
    /// The socket's congestion controller (TCP_CONGESTION), e.g. "bbr".
    var congestionControl = ""

    init() {}

    init?(fd: Int32) {
        var raw = [UInt8](repeating: 0, count: 256)
        var len = socklen_t(raw.count)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &raw, &len) == 0 else { return nil }
        let n = Int(len)
        func u32(_ offset: Int) -> UInt64 {
            offset + 4 <= n ? UInt64(raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }) : 0
        }
        func u64(_ offset: Int) -> UInt64 {
            offset + 8 <= n ? raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } : 0
        }
        backoff = n > 4 ? Int(raw[4]) : 0
        mss = u32(16)
        unackedSegments = u32(24)
        rttMicroseconds = u32(68)
        rttVarianceMicroseconds = u32(72)
        ssthreshSegments = u32(76)
        cwndSegments = u32(80)
        pacingRate = u64(104)
        bytesReceived = u64(128)
        segmentsOut = u32(136)
        segmentsIn = u32(140)
        minRTTMicroseconds = u32(148)
        deliveryRate = u64(160)
        bytesSent = u64(200)
        var name = [UInt8](repeating: 0, count: 16)
        var nameLength = socklen_t(name.count)
        if getsockopt(fd, Int32(IPPROTO_TCP), TCP_CONGESTION, &name, &nameLength) == 0 {
            congestionControl = String(decoding: name.prefix(Int(nameLength)).prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}
