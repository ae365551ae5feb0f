@testable import MemReplica
@testable import MemReplicaSystem
import LinuxShim
import QuicShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif
// The socket constants (SOCK_STREAM ...) can come out of the module cache
// as QuicShim's, which includes <sys/socket.h>; importing it keeps them
// visible here whichever module the compiler met them in first.

/// A loopback TCP relay between clients and a server, for the faults the
/// network would cause (the TCP twin of `UDPRelay`): it can stop forwarding
/// while keeping the connections open (a cut cable, a dead host), or drop
/// what the server sends after the first N bytes (a stalled handshake).
final class TCPRelay: @unchecked Sendable {
    let port: UInt16
    private let listener: Int32
    private let serverPort: UInt16
    private let state = Locked(State())

    struct State {
        var cut = false
        var serverBytesAllowed = Int.max
        var stop = false
        var finished = false
    }

    init(toServerPort serverPort: UInt16) {
        self.serverPort = serverPort
        let sock = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = loopback(port: 0)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(sock, 16)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(sock, $0, &len) } }
        listener = sock
        port = UInt16(bigEndian: addr.sin_port)
        // Not stored: a Thread keeps its block (and so this relay) alive.
        Thread { [self] in run() }.start()
    }

    func cut() { state.withLock { $0.cut = true } }
    func allowServerBytes(_ n: Int) { state.withLock { $0.serverBytesAllowed = n } }

    func stop() {
        state.withLock { $0.stop = true }
        while !state.withLock({ $0.finished }) { usleep(10_000) }
        close(listener)
    }

    private func run() {
        // Pairs of (client side, server side) descriptors.
        var pairs: [(Int32, Int32)] = []
        defer {
            for (a, b) in pairs { close(a); close(b) }
            state.withLock { $0.finished = true }
        }
        var buf = [UInt8](repeating: 0, count: 65536)
        while !state.withLock({ $0.stop }) {
            var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            for (a, b) in pairs {
                fds.append(pollfd(fd: a, events: Int16(POLLIN), revents: 0))
                fds.append(pollfd(fd: b, events: Int16(POLLIN), revents: 0))
            }
            guard poll(&fds, nfds_t(fds.count), 50) > 0 else { continue }
            let polled = pairs.count
            if fds[0].revents != 0 {
                let client = accept(listener, nil, nil)
                let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var dst = loopback(port: serverPort)
                let rc = withUnsafePointer(to: &dst) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                if client >= 0 && rc == 0 {
                    pairs.append((client, server))
                } else {
                    close(client); close(server)
                }
            }
            var ended: Set<Int> = []
            for (i, (a, b)) in pairs.prefix(polled).enumerated() {
                for (from, to, fromServer) in [(a, b, false), (b, a, true)] where fds[1 + 2 * i + (fromServer ? 1 : 0)].revents != 0 {
                    let n = read(from, &buf, buf.count)
                    if n <= 0 { ended.insert(i); continue }
                    let forward: Int = state.withLock { s in
                        if s.cut { return 0 }
                        guard fromServer else { return n }
                        let allowed = min(n, s.serverBytesAllowed)
                        s.serverBytesAllowed -= allowed
                        return allowed
                    }
                    if forward > 0 { _ = write(to, buf, forward) }
                }
            }
            for i in ended.sorted(by: >) {
                close(pairs[i].0)
                close(pairs[i].1)
                pairs.remove(at: i)
            }
        }
    }
}

private func loopback(port: UInt16) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return addr
}

/// A loopback TCP port with nothing listening on it.
func unusedTCPPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = loopback(port: 0)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: addr.sin_port)
}
