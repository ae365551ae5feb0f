@testable import MemReplica
@testable import MemReplicaQUIC
@testable import MemReplicaTCP
@testable import MemReplicaTransportCore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What a misbehaving client can send after a good TLS handshake, and the
/// transport error code the server must answer with (in a CLOSE record).
enum MuxAbuse: String, CaseIterable, Sendable {
    case dataBeforeSettings, unknownRecordType, oversizeData, oversizeControl, windowForUnknownStream,
         finForStreamNeverOpened, wrongMuxVersion, unknownJoinToken, beyondStreamWindow, tooManyStreams,
         settingsTwice

    var expectedCode: MuxErrorCode {
        switch self {
        case .unknownJoinToken: return .joinRefused
        case .beyondStreamWindow: return .flowControl
        case .tooManyStreams: return .streamLimit
        default: return .protocolViolation
        }
    }

    /// The server these run against grants 64 KiB per stream and 4 streams.
    static func serverConfig() -> QUICConfiguration {
        var c = quicConfig(server: true)
        c.streamReceiveWindow = 64 << 10
        c.maxConcurrentStreams = 4
        return c
    }

    var bytes: [UInt8] {
        var out: [UInt8] = []
        let settings = MuxSettings(role: .connection, streamWindow: 1 << 20, connectionWindow: 4 << 20, maxStreams: 16)
        func add(_ type: MuxRecordType, _ stream: Int64 = 0, _ payload: [UInt8] = []) {
            MuxRecord.append(type, stream: stream, payload: payload, to: &out)
        }
        switch self {
        case .dataBeforeSettings:
            add(.data, 0, [1, 2, 3])
        case .unknownRecordType:
            add(.settings, 0, settings.encoded())
            out += [0x7f, 0, 0]
        case .oversizeData:
            add(.settings, 0, settings.encoded())
            out += [MuxRecordType.data.rawValue, 0]
            VarInt.encode(2 << 20, into: &out)
        case .oversizeControl:
            add(.settings, 0, settings.encoded())
            add(.ping, 0, [UInt8](repeating: 0, count: 300))
        case .windowForUnknownStream:
            add(.settings, 0, settings.encoded())
            add(.streamWindow, 8, [0x10])
        case .finForStreamNeverOpened:
            add(.settings, 0, settings.encoded())
            add(.fin, 1)
        case .wrongMuxVersion:
            var payload = settings.encoded()
            payload[0] = 9
            add(.settings, 0, payload)
        case .unknownJoinToken:
            let join = MuxSettings(role: .join, streamWindow: 1 << 20, connectionWindow: 4 << 20, maxStreams: 16,
                                   token: [UInt8](repeating: 7, count: MuxLimits.tokenLength), joinStream: 0)
            add(.settings, 0, join.encoded())
        case .beyondStreamWindow:
            // One record past the 64 KiB window. (Two of 48 KiB raced the
            // server's reader: credit it gave back for the first could
            // arrive in time to make the second legal.)
            add(.settings, 0, settings.encoded())
            add(.data, 0, [UInt8](repeating: 1, count: 80 << 10))
        case .tooManyStreams:
            add(.settings, 0, settings.encoded())
            for s in 0..<5 { add(.data, Int64(s * 4), [1]) }
        case .settingsTwice:
            add(.settings, 0, settings.encoded())
            add(.settings, 0, settings.encoded())
        }
        return out
    }
}

@Suite("TCP transport robustness", .serialized)
struct TCPRobustnessTests {
    @Test("broken mux records end that connection with a named code in a CLOSE record; the server keeps serving",
          arguments: MuxAbuse.allCases)
    func muxAbuse(_ abuse: MuxAbuse) async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try TransportPair(.tcp, pki: pki, serverConfig: MuxAbuse.serverConfig())
        let server = EchoServer(pair.server)
        let port = pair.server.localAddress.port
        let tls = pki.client.tls
        let answer = try await Task.detached {
            let raw = try RawTLSClient(port: port, tls: tls)
            try raw.send(abuse.bytes)
            return raw.readUntilClosed()
        }.value
        let records = try RawTLSClient.records(in: answer)
        let close = try #require(records.last, "the server answered nothing")
        #expect(close.0 == .close)
        let reason = try MuxClose(decoding: close.2)
        #expect(!reason.isApplication)
        #expect(reason.code == abuse.expectedCode.rawValue, "\(reason.reason)")
        #expect(!reason.reason.isEmpty)
        // A connection that got as far as being accepted ends with the violation.
        if records.first?.0 == .settings {
            let accepted = try await server.connection(0)
            let error = try await withTimeout(5, "close") { await accepted.waitClosed() }
            guard case .protocolFailure(let detail) = error else { Issue.record("got \(error)"); return }
            #expect(detail.contains("TCP mux"))
        }
        try await expectServing(pair)
        await pair.close()
        await server.stop()
    }

    @Test("garbage bytes, half TLS records, silent and abandoned TCP connections leave the server serving")
    func garbageOnThePort() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var serverConfig = quicConfig(server: true)
        serverConfig.handshakeTimeout = .seconds(1)
        let pair = try TransportPair(.tcp, pki: pki, serverConfig: serverConfig)
        let server = EchoServer(pair.server)
        let port = pair.server.localAddress.port
        let silent = try await Task.detached { () -> [Int32] in
            var rng = SystemRandomNumberGenerator()
            for i in 0..<300 {
                let fd = rawConnect(port: port)
                guard fd >= 0 else { throw TimeoutError(what: "connecting for garbage", seconds: 0) }
                var bytes = (0..<Int.random(in: 1...4096, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if i % 3 == 0 {
                    // Looks like a TLS handshake record, then is not one.
                    bytes.replaceSubrange(0..<min(5, bytes.count), with: [0x16, 0x03, 0x01, 0x02, 0x00].prefix(bytes.count))
                }
                _ = write(fd, bytes, bytes.count)
                close(fd)
            }
            // Connections that never say anything: the handshake timeout ends them.
            return (0..<20).map { _ in rawConnect(port: port) }
        }.value
        try await Task.sleep(for: .milliseconds(1500))
        try await expectServing(pair)
        let closed = try await withTimeout(10, "silent connections closed by the server") {
            silent.filter { fd in
                var tv = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                var byte: UInt8 = 0
                defer { close(fd) }
                return read(fd, &byte, 1) <= 0
            }.count
        }
        #expect(closed == silent.count)
        await pair.close()
        await server.stop()
    }

    @Test("a client that drops its TCP connection mid-record: the server's connection ends as connectionLost")
    func droppedMidRecord() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try TransportPair(.tcp, pki: pki)
        let server = EchoServer(pair.server)
        let port = pair.server.localAddress.port
        let tls = pki.client.tls
        try await Task.detached {
            let raw = try RawTLSClient(port: port, tls: tls)
            var bytes: [UInt8] = []
            MuxRecord.append(.settings, payload: MuxSettings(role: .connection, streamWindow: 1 << 20, connectionWindow: 4 << 20,
                                                             maxStreams: 16).encoded(), to: &bytes)
            bytes += [MuxRecordType.data.rawValue, 0, 0x40]  // half a DATA header
            try raw.send(bytes)
        }.value
        let accepted = try await server.connection(0)
        let error = try await withTimeout(5, "close") { await accepted.waitClosed() }
        guard case .connectionLost = error else { Issue.record("got \(error)"); return }
        try await expectServing(pair)
        await pair.close()
        await server.stop()
    }

    /// A well-behaved client still connects and gets an echo.
    private func expectServing(_ pair: TransportPair) async throws {
        let conn = try await withTimeout(10, "connect after abuse") { try await pair.client.connect(to: pair.serverAddress) }
        let s = try await conn.openStream()
        try await s.write(Array("still here".utf8))
        try await s.finish()
        #expect(try await s.readAll(limit: 100) == Array("still here".utf8))
        await conn.close(errorCode: 0, reason: "")
    }
}
