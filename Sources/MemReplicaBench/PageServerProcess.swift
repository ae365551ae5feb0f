import LinuxShim
import MemReplicaSystem
import Foundation
import SystemPackage

/// The floor peer of `bench faults` and `bench transport`: a forked child
/// answering 16-byte requests for bytes of a shared mapping over loopback
/// UDP and TCP, with no crypto and no framing (qs_pageserver.h). What a
/// round trip to it costs is the least any transport here can cost.
final class PageServerProcess: Sendable {
    let udpPort: UInt16
    let tcpPort: UInt16
    private let server: qs_page_server

    /// Serves `source`, which must stay mapped (and shared, if it changes)
    /// until `stop`.
    init(serving source: UnsafeRawBufferPointer) throws {
        var s = qs_page_server()
        let rc = qs_page_server_start(source.baseAddress, source.count, &s)
        guard rc == 0 else { throw Errno(rawValue: -rc) }
        server = s
        udpPort = s.udp_port
        tcpPort = s.tcp_port
    }

    func stop() {
        var s = server
        _ = qs_page_server_stop(&s)
    }

    enum Kind: String, Sendable {
        case udp, tcp
    }

    /// A blocking socket connected to the server. Unchecked: it is handed
    /// to one thread, which alone uses it.
    final class Client: @unchecked Sendable {
        let fd: Int32
        let kind: Kind

        init(_ server: PageServerProcess, _ kind: Kind) throws {
            self.kind = kind
            fd = socket(AF_INET, Int32(kind == .udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Errno(rawValue: errno) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = (kind == .udp ? server.udpPort : server.tcpPort).bigEndian
            addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            var one: Int32 = 1
            if kind == .tcp { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
            // A datagram lost on loopback (a full socket buffer) is asked again.
            var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else {
                let e = errno
                close(fd)
                throw Errno(rawValue: e)
            }
        }

        deinit { close(fd) }

        static let pollNanoseconds: UInt64 = 300_000

        /// Asks for `into.count` bytes at `offset` and waits for all of them.
        func fetch(offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
            var request = qs_page_request(offset: UInt64(offset).littleEndian, length: UInt64(buffer.count).littleEndian)
            while true {
                guard send(fd, &request, MemoryLayout<qs_page_request>.size, 0) == MemoryLayout<qs_page_request>.size else {
                    throw Errno(rawValue: errno)
                }
                // Poll for the answer before sleeping on it, as memreplica's
                // loops do for `QUICConfiguration.requestPollWindow`.
                let pollUntil = DispatchTime.now().uptimeNanoseconds + Self.pollNanoseconds
                func receive(_ into: UnsafeMutableRawPointer, _ count: Int) -> Int {
                    while DispatchTime.now().uptimeNanoseconds < pollUntil {
                        let n = recv(fd, into, count, Int32(MSG_DONTWAIT))
                        if n >= 0 || (errno != EAGAIN && errno != EINTR) { return n }
                        sched_yield()
                    }
                    return recv(fd, into, count, 0)
                }
                if kind == .udp {
                    let n = receive(buffer.baseAddress!, buffer.count)
                    if n == buffer.count { return }
                    if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
                    throw Errno(rawValue: n < 0 ? errno : EPROTO)
                }
                var got = 0
                while got < buffer.count {
                    let n = receive(buffer.baseAddress! + got, buffer.count - got)
                    if n <= 0 {
                        if n < 0 && errno == EINTR { continue }
                        throw Errno(rawValue: n < 0 ? errno : ECONNRESET)
                    }
                    got += n
                }
                return
            }
        }
    }

    /// Round trips of a `requestBytes`-byte request for `responseBytes`
    /// over `kind`, timed on a thread of their own (ns each).
    func roundTrips(_ kind: Kind, iterations: Int, responseBytes: Int, sourceBytes: Int) async throws -> [UInt64] {
        try await withCheckedThrowingContinuation { done in
            let thread = Thread { [self] in
                do {
                    let client = try Client(self, kind)
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: responseBytes, alignment: 64)
                    defer { buffer.deallocate() }
                    var samples: [UInt64] = []
                    samples.reserveCapacity(iterations)
                    let slots = max(1, sourceBytes / responseBytes)
                    // As the transports' loops: the first 200 warm the path up, untimed.
                    let warmup = min(200, iterations)
                    for i in 0..<(iterations + warmup) {
                        let start = DispatchTime.now().uptimeNanoseconds
                        try client.fetch(offset: (i % slots) * responseBytes, into: buffer)
                        if i >= warmup { samples.append(DispatchTime.now().uptimeNanoseconds - start) }
                    }
                    done.resume(returning: samples)
                } catch {
                    done.resume(throwing: error)
                }
            }
            thread.name = "bench floor \(kind)"
            thread.start()
        }
    }
}
