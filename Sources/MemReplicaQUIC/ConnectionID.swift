import QuicShim
import LinuxShim

/// A QUIC connection ID (at most 20 bytes) as a fixed-size hashable key, so
/// routing a datagram to its connection allocates nothing.
struct ConnectionID: Hashable, Sendable {
    private var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt32 = 0
    private var length: UInt8 = 0

    static let localLength = 16

    init(_ bytes: UnsafeRawBufferPointer) {
        let n = min(bytes.count, 20)
        length = UInt8(n)
        withUnsafeMutableBytes(of: &self) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes.prefix(n)))
        }
        length = UInt8(n)
    }

    init(_ cid: ngtcp2_cid) {
        var copy = cid
        self = withUnsafeBytes(of: &copy.data) { ConnectionID(UnsafeRawBufferPointer(rebasing: $0.prefix(cid.datalen))) }
    }

    static func random(length: Int = localLength) -> (ConnectionID, ngtcp2_cid) {
        var cid = ngtcp2_cid()
        withUnsafeMutableBytes(of: &cid.data) { fillRandom($0.baseAddress!, length) }
        cid.datalen = length
        return (ConnectionID(cid), cid)
    }
}

/// Cryptographically secure random bytes (getrandom).
func fillRandom(_ dest: UnsafeMutableRawPointer, _ count: Int) {
    var done = 0
    while done < count {
        let n = getrandom(dest + done, count - done, 0)
        if n > 0 { done += n }
    }
}

#if canImport(Glibc)
import Glibc
#endif
