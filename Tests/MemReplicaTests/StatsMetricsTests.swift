@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTransportCore
import LinuxShim
import QuicShim
import Foundation
import Logging
import Testing
#if canImport(Glibc)
import Glibc
#endif
// The socket constants (SOCK_STREAM ...) can come out of the module cache
// as QuicShim's, which includes <sys/socket.h>; importing it keeps them
// visible here whichever module the compiler met them in first.

/// One HTTP exchange over a fresh loopback connection: sends `request`
/// (all of it, possibly nothing) and returns everything the server sends
/// until it closes.
private func exchange(port: UInt16, _ request: [UInt8], timeout: Duration = .seconds(10)) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw TransportError.system(call: "connect", errno: errno) }
    var seconds = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &seconds, socklen_t(MemoryLayout<timeval>.size))
    // A server that answers before reading everything may reset the rest.
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var reply: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        reply += buffer[..<n]
    }
    return String(decoding: reply, as: UTF8.self)
}

private func quiet() -> Logger {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    return logger
}

@Suite("Stats: the metrics endpoint", .serialized)
struct StatsMetricsTests {
    @Test("GET /metrics is answered with the exposition type; other paths 404, other methods 405, oversize heads 431")
    func httpAnswers() throws {
        let server = try MetricsServer(address: MetricsServer.address(parsing: ":0"), logger: quiet()) {
            Array("memreplica_uptime_seconds 1.0\n".utf8)
        }
        defer { server.stop() }
        #expect(server.localAddress.host == "127.0.0.1" && server.localAddress.port != 0)
        let port = server.localAddress.port
        let ok = try exchange(port: port, Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
        #expect(ok.contains("Content-Length: 30\r\n") && ok.hasSuffix("\r\n\r\nmemreplica_uptime_seconds 1.0\n"))
        let head = try exchange(port: port, Array("HEAD /metrics HTTP/1.1\r\n\r\n".utf8))
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n") && head.contains("Content-Length: 30\r\n") && head.hasSuffix("\r\n\r\n"))
        #expect(try exchange(port: port, Array("GET / HTTP/1.1\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 404 "))
        #expect(try exchange(port: port, Array("POST /metrics HTTP/1.1\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 405 "))
        #expect(try exchange(port: port, Array("garbage\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 400 "))
        let huge = Array("GET /metrics HTTP/1.1\r\nX: ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: MetricsServer.requestLimit)
        #expect(try exchange(port: port, huge).hasPrefix("HTTP/1.1 431 "))
    }

    @Test("a client that sends nothing holds the server for at most its I/O timeout")
    func silentClient() async throws {
        let server = try MetricsServer(address: MetricsServer.address(parsing: ":0"), logger: quiet()) { Array("x 1\n".utf8) }
        defer { server.stop() }
        let port = server.localAddress.port
        let silent = Task.detached { try exchange(port: port, []) }
        try await Task.sleep(for: .milliseconds(100))
        let started = ContinuousClock.now
        let answer = try exchange(port: port, Array("GET /metrics HTTP/1.1\r\n\r\n".utf8))
        let waited = started.duration(to: .now)
        #expect(answer.hasPrefix("HTTP/1.1 200 OK"))
        #expect(waited < MetricsServer.ioTimeout + .seconds(1), "waited \(waited)")
        #expect(try await silent.value == "", "the silent client was answered")
    }

    @Test("counters add what a total grew by, a restarted total counts whole, and a gone connection's series go")
    func seriesFromReports() throws {
        let metrics = PrometheusStatistics()
        var summary = ConnectionSummary(remoteAddress: "10.0.0.2:4433", identity: PeerIdentity(subject: "CN=b", commonName: "b", alternativeNames: [], fingerprint: "ff"),
                                        initiatedLocally: true, statistics: ConnectionStatistics())
        func report(_ connections: [ConnectionSummary]) -> StatsReport {
            StatsReport(version: "t", peer: "a", takenAt: Date(), uptimeSeconds: 1, windowSeconds: 60,
                        connections: connections.map { StatsReport.Connection($0, reconnects: 0) }, regions: [])
        }
        func text() -> String { String(decoding: metrics.exposition(), as: UTF8.self) }
        let series = #"memreplica_sent_bytes_total{peer="b",remote="10.0.0.2:4433",direction="out"}"#
        summary.statistics.bytesSent = 100
        summary.statistics.smoothedRTT = .milliseconds(20)
        metrics.update(from: report([summary]))
        #expect(text().contains(series + " 100.0"))
        summary.statistics.bytesSent = 150
        metrics.update(from: report([summary]))
        #expect(text().contains(series + " 150.0"))
        summary.statistics.bytesSent = 30
        metrics.update(from: report([summary]))
        #expect(text().contains(series + " 180.0"))
        #expect(text().contains(#"memreplica_smoothed_rtt_seconds{peer="b",remote="10.0.0.2:4433",direction="out"} 0.02"#))
        // The bulk queue gate's held time: a counter where there is a gate, no series where there is none.
        #expect(!text().contains("memreplica_bulk_queue_held_seconds_total{"))
        summary.statistics.bulkQueueHeld = .milliseconds(250)
        metrics.update(from: report([summary]))
        #expect(text().contains(#"memreplica_bulk_queue_held_seconds_total{peer="b",remote="10.0.0.2:4433",direction="out"} 0.25"#))
        metrics.update(from: report([]))
        #expect(!text().contains("memreplica_sent_bytes_total{"))
        #expect(!text().contains("memreplica_smoothed_rtt_seconds{"))
        #expect(!text().contains("memreplica_bulk_queue_held_seconds_total{"))
        metrics.record(.faultLatency, region: "r", .milliseconds(3))
        #expect(text().contains(#"memreplica_fault_latency_seconds_bucket{region="r",le="0.0025"} 0"#))
        #expect(text().contains(#"memreplica_fault_latency_seconds_bucket{region="r",le="0.005"} 1"#))
        #expect(text().contains(#"memreplica_fault_latency_seconds_count{region="r"} 1"#))
    }
}
