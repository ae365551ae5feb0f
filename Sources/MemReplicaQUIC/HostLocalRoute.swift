import LinuxShim
import MemReplicaSystem
import MemReplicaTransportCore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The route to a peer on this same host. Its MTU is the loopback
/// device's, known exactly, so packets need not be sized for an unknown
/// path (`QUICConfiguration.hostLocalUDPPayloadSize`).
enum HostLocalRoute {
    /// The largest UDP payload the route to `address` carries when
    /// `address` is one of this host's own addresses (as seen from
    /// `namespace`), else nil.
    ///
    /// A UDP `connect` sends nothing: it only makes the kernel pick the
    /// route and a source address. When that source is the destination
    /// itself, the peer is on this host; `IP_MTU` then reports the route's
    /// MTU (65536 on `lo`).
    static func payloadSize(to address: SocketAddressStorage, namespace: NetworkNamespace?) -> Int? {
        let family = address.family
        guard family == AF_INET || family == AF_INET6 else { return nil }
        let create = { socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard let raw = try? namespace?.perform(create) ?? create(), raw >= 0 else { return nil }
        let fd = FileDescriptor(rawValue: raw)
        defer { try? fd.close() }
        guard address.withSockaddr({ connect(raw, $0, $1) }) == 0 else { return nil }

        var source = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &source) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(raw, $0, &length) }
        }
        guard named == 0 else { return nil }
        let local = withUnsafePointer(to: &source) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddressStorage($0, length: length) }
        }
        guard local.hostBytes == address.hostBytes else { return nil }

        var mtu: Int32 = 0
        var mtuLength = socklen_t(MemoryLayout<Int32>.size)
        let asked = family == AF_INET
            ? getsockopt(raw, Int32(IPPROTO_IP), IP_MTU, &mtu, &mtuLength)
            : getsockopt(raw, Int32(IPPROTO_IPV6), IPV6_MTU, &mtu, &mtuLength)
        guard asked == 0 else { return nil }
        // IP and UDP headers (IPv6's, the larger, for an IPv6 socket even
        // when it carries IPv4).
        let payload = Int(mtu) - (family == AF_INET ? 28 : 48)
        return payload >= 1200 ? payload : nil
    }
}

extension SocketAddressStorage {
    /// The IP address alone (4 or 16 bytes), without port or scope.
    var hostBytes: [UInt8] {
        bytes.withUnsafeBytes { raw in
            switch family {
            case AF_INET:
                let sin = raw.load(as: sockaddr_in.self)
                return withUnsafeBytes(of: sin.sin_addr) { Array($0) }
            case AF_INET6:
                let sin6 = raw.load(as: sockaddr_in6.self)
                return withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
            default:
                return []
            }
        }
    }
}
