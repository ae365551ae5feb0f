import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking UDP socket with large buffers and, where the kernel has
/// them, GSO for sending and GRO for receiving.
final class UDPSocket {
    let fd: FileDescriptor
    let localAddress: PeerAddress
    /// True when the socket is IPv6 and also carries IPv4 (v4-mapped).
    let isDualStack: Bool
    let groEnabled: Bool
    /// The bound address exactly as the kernel reports it.
    let boundStorage: SocketAddressStorage

    /// `namespace`: the network namespace the socket is created in (nil: the thread's own).
    init(bindTo address: PeerAddress, bufferSize: Int, namespace: NetworkNamespace? = nil) throws {
        let family = address.storage.family
        let create = { socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let raw = try namespace?.perform(create) ?? create()
        guard raw >= 0 else { throw TransportError.system(call: "socket", errno: errno) }
        fd = FileDescriptor(rawValue: raw)
        var dual = false
        do {
            if family == AF_INET6 {
                var off: Int32 = 0
                // Any IPv6 socket may carry IPv4 too, so `--listen :4433` and
                // a client endpoint reach both families.
                if setsockopt(raw, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &off, socklen_t(MemoryLayout<Int32>.size)) == 0 {
                    dual = true
                }
            }
            UDPSocket.setBuffer(raw, force: SO_RCVBUFFORCE, plain: SO_RCVBUF, size: bufferSize)
            UDPSocket.setBuffer(raw, force: SO_SNDBUFFORCE, plain: SO_SNDBUF, size: bufferSize)
            let rc = address.storage.withSockaddr { bind(raw, $0, $1) }
            if rc != 0 {
                let e = errno
                if e == EADDRINUSE { throw TransportError.addressInUse(address: address.description) }
                throw TransportError.system(call: "bind \(address)", errno: e)
            }
            let storage = SocketAddressStorage.local(of: raw)
            boundStorage = storage
            let resolved = PeerAddress(storage: storage)
            localAddress = address.isWildcard ? try PeerAddress(parsing: ":\(resolved.port)") : resolved
            groEnabled = qs_udp_enable_gro(raw) == 0
        } catch {
            try? fd.close()
            throw error
        }
        isDualStack = dual
    }

    private static func setBuffer(_ fd: Int32, force: Int32, plain: Int32, size: Int) {
        var value = Int32(clamping: size)
        let len = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, force, &value, len) != 0 {
            // Not root: take what rmem_max/wmem_max allow.
            _ = setsockopt(fd, SOL_SOCKET, plain, &value, len)
        }
    }

    /// The destination as this socket must see it (v4-mapped on dual stack).
    func normalized(_ address: SocketAddressStorage) -> SocketAddressStorage {
        isDualStack ? address.mappedToIPv6 : address
    }

    enum SendResult { case sent, wouldBlock, failed(Int32) }

    func send(_ buffer: UnsafeRawBufferPointer, segmentSize: Int, to address: SocketAddressStorage) -> SendResult {
        let n = address.withPacketSockaddr { sa, len in
            qs_udp_send(fd.rawValue, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), buffer.count,
                        segmentSize, sa, len)
        }
        if n >= 0 { return .sent }
        let e = errno
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        return .failed(e)
    }

    /// One receive: the bytes (possibly several GRO-coalesced datagrams of
    /// `segmentSize` each) and the sender; nil when nothing is queued.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (count: Int, segmentSize: Int, from: SocketAddressStorage)? {
        while true {
            var from = sockaddr_storage()
            var fromLen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            var segment = 0
            let n = qs_udp_recv(fd.rawValue, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), buffer.count,
                                &from, &fromLen, &segment)
            if n < 0 {
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK { return nil }
                // An ICMP error for an earlier send: nothing to read, try again.
                if e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH { continue }
                throw TransportError.system(call: "recvmsg", errno: e)
            }
            let storage = withUnsafePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddressStorage($0, length: fromLen) }
            }
            return (n, segment, storage)
        }
    }

    func close() { try? fd.close() }
}
