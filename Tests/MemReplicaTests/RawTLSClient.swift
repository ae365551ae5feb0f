@testable import MemReplica
@testable import MemReplicaTransportCore
@testable import MemReplicaQUIC
@testable import MemReplicaTCP
import LinuxShim
import COpenSSL
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A blocking OpenSSL client that speaks TLS (mutual, ALPN memreplica/1) to
/// a TCP transport port and then sends whatever bytes a test wants: the
/// tool for feeding a server broken mux records.
final class RawTLSClient {
    private let fd: Int32
    private let ctx: OpaquePointer
    private let ssl: OpaquePointer

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    init(port: UInt16, tls: TLSConfiguration) throws {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw Failure(description: "SSL_CTX_new") }
        self.ctx = ctx
        SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, Int(TLS1_3_VERSION), nil)
        guard SSL_CTX_load_verify_locations(ctx, tls.caFile, nil) == 1,
              SSL_CTX_use_certificate_chain_file(ctx, tls.certificateFile) == 1,
              SSL_CTX_use_PrivateKey_file(ctx, tls.keyFile, SSL_FILETYPE_PEM) == 1 else {
            SSL_CTX_free(ctx)
            throw Failure(description: "loading certificates")
        }
        let alpn: [UInt8] = [12] + Array("memreplica/1".utf8)
        _ = SSL_CTX_set_alpn_protos(ctx, alpn, UInt32(alpn.count))
        fd = rawConnect(port: port)
        guard fd >= 0, let ssl = SSL_new(ctx) else {
            SSL_CTX_free(ctx)
            throw Failure(description: "connect")
        }
        self.ssl = ssl
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        SSL_set_fd(ssl, fd)
        guard SSL_connect(ssl) == 1 else { throw Failure(description: "TLS handshake failed") }
    }

    deinit {
        SSL_free(ssl)
        SSL_CTX_free(ctx)
        close(fd)
    }

    func send(_ bytes: [UInt8]) throws {
        guard SSL_write(ssl, bytes, Int32(bytes.count)) == Int32(bytes.count) else { throw Failure(description: "SSL_write") }
    }

    /// Everything the server sends until it ends the connection (or 5 s pass).
    func readUntilClosed() -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = SSL_read(ssl, &buffer, Int32(buffer.count))
            if n <= 0 { return out }
            out += buffer[0..<Int(n)]
        }
    }

    /// The mux records in `bytes` (type, stream, payload), DATA included.
    static func records(in bytes: [UInt8]) throws -> [(MuxRecordType, Int64, [UInt8])] {
        var parser = MuxParser()
        var out: [(MuxRecordType, Int64, [UInt8])] = []
        try bytes.withUnsafeBytes { raw in
            try parser.consume(raw) { event in
                switch event {
                case .record(let type, let stream, let payload): out.append((type, stream, payload))
                case .dataHeader(let stream, _): out.append((.data, stream, []))
                case .dataBytes: break
                }
            }
        }
        return out
    }
}

/// A blocking TCP connection to a loopback port (-1 on failure).
func rawConnect(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if rc != 0 {
        close(fd)
        return -1
    }
    return fd
}
