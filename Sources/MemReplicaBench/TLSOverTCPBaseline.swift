import LinuxShim
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// TLS 1.3 over TCP with OpenSSL and mutual authentication: the ceiling the
/// transport benchmark compares QUIC against (kernel TCP, no per-packet
/// user-space work). Blocking sockets on two threads, as simple as TLS over
/// TCP gets.
struct TLSOverTCPBaseline {
    let tls: TLSConfiguration

    enum Failure: Error, CustomStringConvertible {
        case openssl(String)
        var description: String {
            switch self { case .openssl(let s): return "OpenSSL: \(s)" }
        }
    }

    private func context(server: Bool) throws -> OpaquePointer {
        guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw Failure.openssl("SSL_CTX_new")
        }
        SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_3_VERSION), nil)
        guard SSL_CTX_use_certificate_chain_file(ctx, tls.certificateFile) == 1,
              SSL_CTX_use_PrivateKey_file(ctx, tls.keyFile, SSL_FILETYPE_PEM) == 1,
              SSL_CTX_load_verify_locations(ctx, tls.caFile, nil) == 1 else {
            SSL_CTX_free(ctx)
            throw Failure.openssl("loading certificates")
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        return ctx
    }

    /// Sends `totalBytes` client → server in `chunk`-sized writes; returns
    /// seconds from connect to the server's one-byte receipt.
    func measureThroughput(totalBytes: Int, chunk: Int = 256 << 10) throws -> Double {
        try withConnection(noDelay: false, server: { ssl in
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var got = 0
            while got < totalBytes {
                let n = SSL_read(ssl, &buffer, Int32(buffer.count))
                if n <= 0 { return }
                got += Int(n)
            }
            var ack: UInt8 = 1
            _ = SSL_write(ssl, &ack, 1)
            _ = SSL_shutdown(ssl)
        }, client: { ssl, connectStart in
            let payload = [UInt8](repeating: 0x5a, count: chunk)
            var sent = 0
            while sent < totalBytes {
                let n = min(chunk, totalBytes - sent)
                guard SSL_write(ssl, payload, Int32(n)) == Int32(n) else { throw Failure.openssl("SSL_write") }
                sent += n
            }
            var ack: UInt8 = 0
            guard SSL_read(ssl, &ack, 1) == 1 else { throw Failure.openssl("no receipt") }
            return Double(monotonicNanoseconds() - connectStart) / 1e9
        })
    }

    /// Request/response latency: `request` bytes out, `response` bytes back,
    /// on one connection; returns per-exchange nanoseconds.
    func measureLatency(iterations: Int, request: Int, response: Int) throws -> [UInt64] {
        try withConnection(noDelay: true, server: { ssl in
            var req = [UInt8](repeating: 0, count: request)
            let resp = [UInt8](repeating: 0x33, count: response)
            for _ in 0..<iterations {
                guard Self.readFully(ssl, into: &req) else { return }
                _ = SSL_write(ssl, resp, Int32(response))
            }
        }, client: { ssl, _ in
            let req = [UInt8](repeating: 0x11, count: request)
            var resp = [UInt8](repeating: 0, count: response)
            var samples: [UInt64] = []
            samples.reserveCapacity(iterations)
            for _ in 0..<iterations {
                let t0 = monotonicNanoseconds()
                guard SSL_write(ssl, req, Int32(request)) == Int32(request) else { throw Failure.openssl("SSL_write") }
                guard Self.readFully(ssl, into: &resp) else { throw Failure.openssl("SSL_read") }
                samples.append(monotonicNanoseconds() - t0)
            }
            return samples
        })
    }

    private static func readFully(_ ssl: OpaquePointer, into buffer: inout [UInt8]) -> Bool {
        var got = 0
        let count = buffer.count
        while got < count {
            let n = buffer.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress! + got, Int32(count - got)) }
            if n <= 0 { return false }
            got += Int(n)
        }
        return true
    }

    /// One mutually authenticated TLS connection over loopback TCP: `server`
    /// runs on its own thread with the accepted session, `client` here with
    /// the connected one and the time just before connect.
    private func withConnection<R>(noDelay: Bool, server: @escaping @Sendable (OpaquePointer) -> Void,
                                   client: (OpaquePointer, UInt64) throws -> R) throws -> R {
        let serverCtx = try context(server: true)
        let clientCtx = try context(server: false)
        defer { SSL_CTX_free(serverCtx); SSL_CTX_free(clientCtx) }
        let (listener, port) = try listenLoopback()
        defer { close(listener) }
        // Deferred last, runs first: the server thread has finished with
        // the context before it is freed.
        let serverHandle = SSLContextHandle(ctx: serverCtx)
        let done = DispatchSemaphore(value: 0)
        defer { shutdown(listener, Int32(SHUT_RDWR)); done.wait() }
        Thread {
            defer { done.signal() }
            let fd = accept(listener, nil, nil)
            guard fd >= 0, let ssl = SSL_new(serverHandle.ctx) else { return }
            defer { SSL_free(ssl); close(fd) }
            if noDelay { Self.setNoDelay(fd) }
            SSL_set_fd(ssl, fd)
            guard SSL_accept(ssl) == 1 else { return }
            server(ssl)
        }.start()
        let start = monotonicNanoseconds()
        let fd = try connectLoopback(port: port)
        defer { close(fd) }
        if noDelay { Self.setNoDelay(fd) }
        guard let ssl = SSL_new(clientCtx) else { throw Failure.openssl("SSL_new") }
        defer { SSL_free(ssl) }
        SSL_set_fd(ssl, fd)
        guard SSL_connect(ssl) == 1 else { throw Failure.openssl("handshake failed") }
        return try client(ssl, start)
    }

    private static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
    }

    private struct SSLContextHandle: @unchecked Sendable { let ctx: OpaquePointer }

    private func listenLoopback() throws -> (Int32, UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && listen(fd, 4) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { close(fd); throw TransportError.system(call: "bind/listen", errno: errno) }
        return (fd, UInt16(bigEndian: addr.sin_port))
    }

    private func connectLoopback(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw TransportError.system(call: "connect", errno: errno) }
        return fd
    }
}
