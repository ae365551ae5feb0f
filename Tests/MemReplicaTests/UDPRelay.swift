@testable import MemReplica
@testable import MemReplicaSystem
import LinuxShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif
// The socket constants (SOCK_STREAM ...) can come out of the module cache
// as QuicShim's, which includes <sys/socket.h>; importing it keeps them
// visible here whichever module the compiler met them in first.

/// A loopback UDP relay between a client and a server, for faults the
/// network would cause: it can stop forwarding (a cut cable, a dead host)
/// or let through only the first N server datagrams (a stalled handshake),
/// or lose the client's next datagrams.
/// With a one-way delay it stands for a long path (round trips count).
final class UDPRelay: @unchecked Sendable {
    let port: UInt16
    private let fd: Int32
    private let serverPort: UInt16
    private let delayNanoseconds: UInt64
    private let state = Locked(State())
    /// Datagrams waiting out the delay (relay thread only).
    private var delayed: [(due: UInt64, bytes: [UInt8], to: UInt16)] = []

    struct State {
        var cut = false
        /// Server datagrams dropped while cut.
        var cutFromServer = 0
        var serverDatagramsAllowed = Int.max
        var clientDatagramsToDrop = 0
        var clientInitialsToDrop = 0
        var clientPort: UInt16 = 0
        var stop = false
        var forwarded = 0
        var finished = false
        /// Client datagrams kept for a replay, while recording.
        var recording = false
        var recorded: [[UInt8]] = []
        /// The largest datagram forwarded each way.
        var largestFromClient = 0
        var largestFromServer = 0
        /// The first datagrams' sizes, negative from the server.
        var firstSizes: [Int] = []
        /// QUIC v1 Retry packets from the server (long header, type 3).
        var retriesFromServer = 0
    }

    init(toServerPort serverPort: UInt16, oneWayDelay: Duration = .zero) {
        self.serverPort = serverPort
        delayNanoseconds = UInt64(oneWayDelay.seconds * 1e9)
        let sock = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(sock, $0, &len) } }
        // Room for a burst of 64 KiB datagrams between peers on this host.
        var buffer: Int32 = 4 << 20
        setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &buffer, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        fd = sock
        port = UInt16(bigEndian: addr.sin_port)
        // Not stored: a Thread keeps its block (and so this relay) alive.
        Thread { [self] in run() }.start()
    }

    func cut() { state.withLock { $0.cut = true } }
    /// Server datagrams the cut has dropped so far: a test that restores
    /// the relay waits for what it means to lose (a datagram still in the
    /// relay's socket when it is restored would be forwarded).
    var serverDatagramsCut: Int { state.withLock { $0.cutFromServer } }
    /// Forwards again after `cut` (the cable is plugged back in).
    func restore() { state.withLock { $0.cut = false } }
    func allowServerDatagrams(_ n: Int) { state.withLock { $0.serverDatagramsAllowed = n } }
    /// Drops the next `n` datagrams from the client (lost packets).
    func dropClientDatagrams(_ n: Int) { state.withLock { $0.clientDatagramsToDrop = n } }
    /// Drops the next `n` datagrams from the client that start with an
    /// Initial packet (the header's first byte is not encrypted there).
    func dropClientInitials(_ n: Int) { state.withLock { $0.clientInitialsToDrop = n } }
    var forwarded: Int { state.withLock { $0.forwarded } }
    /// Keeps a copy of every client datagram from now on (an eavesdropper).
    func recordClientDatagrams() { state.withLock { $0.recording = true } }
    var recordedClientDatagrams: [[UInt8]] { state.withLock { $0.recorded } }
    var largestDatagrams: (fromClient: Int, fromServer: Int) {
        state.withLock { ($0.largestFromClient, $0.largestFromServer) }
    }
    var firstDatagramSizes: [Int] { state.withLock { $0.firstSizes } }
    var retriesFromServer: Int { state.withLock { $0.retriesFromServer } }

    func stop() {
        state.withLock { $0.stop = true }
        while !state.withLock({ $0.finished }) { usleep(10_000) }
        close(fd)
    }

    private func run() {
        defer { state.withLock { $0.finished = true } }
        var buf = [UInt8](repeating: 0, count: 65536)
        while !state.withLock({ $0.stop }) {
            sendDue()
            // poll, not the socket timeout, waits for the next due datagram:
            // SO_RCVTIMEO rounds up to scheduler ticks (4 ms here).
            var timeoutMs: Int32 = 50
            if let first = delayed.first {
                let now = monotonicNanoseconds()
                timeoutMs = first.due > now ? Int32((first.due - now + 999_999) / 1_000_000) : 0
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, timeoutMs) > 0 else { continue }
            var from = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
            }
            guard n > 0 else { continue }
            let fromPort = UInt16(bigEndian: from.sin_port)
            let target: UInt16? = state.withLock { s in
                if s.cut {
                    if fromPort == serverPort { s.cutFromServer += 1 }
                    return nil
                }
                if fromPort == serverPort {
                    s.largestFromServer = max(s.largestFromServer, n)
                    if buf[0] & 0xf0 == 0xf0 { s.retriesFromServer += 1 }
                } else {
                    s.largestFromClient = max(s.largestFromClient, n)
                }
                if s.firstSizes.count < 40 { s.firstSizes.append(fromPort == serverPort ? -n : n) }
                if fromPort == serverPort {
                    guard s.serverDatagramsAllowed > 0, s.clientPort != 0 else { return nil }
                    s.serverDatagramsAllowed -= 1
                    s.forwarded += 1
                    return s.clientPort
                }
                s.clientPort = fromPort
                if s.clientInitialsToDrop > 0, buf[0] & 0xf0 == 0xc0 {
                    s.clientInitialsToDrop -= 1
                    return nil
                }
                if s.clientDatagramsToDrop > 0 {
                    s.clientDatagramsToDrop -= 1
                    return nil
                }
                s.forwarded += 1
                if s.recording { s.recorded.append(Array(buf[0..<n])) }
                return serverPort
            }
            guard let to = target else { continue }
            if delayNanoseconds > 0 {
                delayed.append((monotonicNanoseconds() + delayNanoseconds, Array(buf[0..<n]), to))
            } else {
                send(Array(buf[0..<n]), to: to)
            }
        }
    }

    private func sendDue() {
        guard !delayed.isEmpty else { return }
        let now = monotonicNanoseconds()
        while let first = delayed.first, first.due <= now {
            delayed.removeFirst()
            send(first.bytes, to: first.to)
        }
    }

    private func send(_ bytes: [UInt8], to port: UInt16) {
        var dst = sockaddr_in()
        dst.sin_family = sa_family_t(AF_INET)
        dst.sin_port = port.bigEndian
        dst.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &dst) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}

/// A loopback UDP port with nothing listening on it.
func unusedUDPPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: addr.sin_port)
}

/// Sends raw datagrams at a port (garbage, truncated handshakes).
func sendRawDatagrams(to port: UInt16, _ datagrams: [[UInt8]]) {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var dst = sockaddr_in()
    dst.sin_family = sa_family_t(AF_INET)
    dst.sin_port = port.bigEndian
    dst.sin_addr.s_addr = inet_addr("127.0.0.1")
    for d in datagrams {
        _ = withUnsafePointer(to: &dst) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, d, d.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
