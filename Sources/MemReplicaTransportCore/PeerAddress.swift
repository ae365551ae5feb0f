import LinuxShim
import MemReplicaSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A network address as users write it (`HOST:PORT`, `[v6]:PORT`, `:PORT`)
/// together with the resolved socket address.
public struct PeerAddress: Sendable, Hashable, CustomStringConvertible {
    /// Empty when the address means "every interface".
    public let host: String
    public let port: UInt16
    package let storage: SocketAddressStorage

    /// Parses and resolves `HOST:PORT`. An empty host means all interfaces
    /// (IPv6 and IPv4) when listening.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let colon = trimmed.lastIndex(of: ":") else {
            throw TransportError.badAddress(input: text, reason: "missing ':PORT'")
        }
        var host = String(trimmed[..<colon])
        let portText = trimmed[trimmed.index(after: colon)...]
        guard let port = UInt16(portText) else {
            throw TransportError.badAddress(input: text, reason: "port must be a number from 0 to 65535")
        }
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else {
                throw TransportError.badAddress(input: text, reason: "unbalanced brackets")
            }
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            throw TransportError.badAddress(input: text, reason: "write IPv6 addresses in brackets")
        }
        try self.init(host: host, port: port, original: text)
    }

    public init(host: String, port: UInt16) throws {
        try self.init(host: host, port: port, original: "\(host):\(port)")
    }

    private init(host: String, port: UInt16, original: String) throws {
        self.host = host
        self.port = port
        if host.isEmpty {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_addr = in6addr_any
            storage = SocketAddressStorage(sin6)
            return
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            let reason = rc == 0 ? "no address" : String(cString: gai_strerror(rc))
            throw TransportError.badAddress(input: original, reason: reason)
        }
        defer { freeaddrinfo(result) }
        storage = SocketAddressStorage(first.pointee.ai_addr, length: first.pointee.ai_addrlen)
    }

    package init(storage: SocketAddressStorage) {
        self.storage = storage
        (host, port) = storage.hostAndPort
    }

    public var isWildcard: Bool { host.isEmpty }

    public var description: String {
        if host.isEmpty { return ":\(port)" }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// Raw `sockaddr_storage` bytes with their length; value type, Sendable.
package struct SocketAddressStorage: Sendable, Hashable {
    package private(set) var bytes: [UInt8]

    /// The address `fd` is bound to (getsockname).
    package static func local(of fd: Int32) -> SocketAddressStorage {
        var bound = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return withUnsafePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddressStorage($0, length: len) }
        }
    }

    init(_ sin6: sockaddr_in6) {
        var copy = sin6
        bytes = withUnsafeBytes(of: &copy) { Array($0) }
    }

    init(_ sin: sockaddr_in) {
        var copy = sin
        bytes = withUnsafeBytes(of: &copy) { Array($0) }
    }

    package init(_ addr: UnsafePointer<sockaddr>, length: socklen_t) {
        bytes = Array(UnsafeRawBufferPointer(start: addr, count: Int(length)))
    }

    package var family: Int32 {
        bytes.withUnsafeBytes { Int32($0.load(as: sockaddr.self).sa_family) }
    }

    var length: socklen_t { socklen_t(bytes.count) }

    package func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { raw in
            try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
    }

    /// The same address as seen through a dual-stack IPv6 socket.
    package var mappedToIPv6: SocketAddressStorage {
        guard family == AF_INET else { return self }
        let sin = bytes.withUnsafeBytes { $0.load(as: sockaddr_in.self) }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = sin.sin_port
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { a in
            a[10] = 0xff; a[11] = 0xff
            withUnsafeBytes(of: sin.sin_addr) { v4 in
                for i in 0..<4 { a[12 + i] = v4[i] }
            }
        }
        return SocketAddressStorage(sin6)
    }

    var hostAndPort: (String, UInt16) {
        var hostBuf = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var servBuf = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let rc = withSockaddr { sa, len in
            getnameinfo(sa, len, &hostBuf, socklen_t(hostBuf.count), &servBuf, socklen_t(servBuf.count),
                        NI_NUMERICHOST | NI_NUMERICSERV)
        }
        guard rc == 0 else { return ("?", 0) }
        var host = stringFromCBuffer(hostBuf)
        if host.hasPrefix("::ffff:"), host.contains(".") { host = String(host.dropFirst(7)) }
        return (host, UInt16(stringFromCBuffer(servBuf)) ?? 0)
    }
}
