@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Dispatch
import Foundation
import Logging
import Testing

@Suite("Control socket")
struct ControlSocketTests {
    static func makeReport() -> StatusReport {
        StatusReport(version: memReplicaVersion, listenAddress: "127.0.0.1:4433",
                     identity: .init(PeerIdentity(subject: "O=memreplica,CN=a", commonName: "a", alternativeNames: ["a"],
                                                  fingerprint: String(repeating: "ab", count: 32))),
                     startedAt: Date(timeIntervalSince1970: 1_700_000_000), uptimeSeconds: 12.5, peers: [])
    }

    static func scratch() throws -> String {
        let dir = NSTemporaryDirectory() + "mr-ctl-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func server(_ path: String) throws -> ControlServer {
        try ControlServer(path: path, logger: Logger(label: "test")) { request in
            request.command == "status" ? .status(makeReport()) : .error("unknown command '\(request.command)'")
        }
    }

    /// Sends raw bytes and returns the raw answer line (off the concurrency
    /// pool: the calls block, and the server may need the pool to answer).
    /// With `answerMayCutSend`, a send the server cut short (it answered
    /// and closed before reading everything) is not an error: the answer is
    /// still read.
    static func rawExchange(_ path: String, _ bytes: [UInt8], answerMayCutSend: Bool = false) async throws -> String {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async {
                c.resume(with: Result {
                    let socket = try UnixSocket.connect(to: path)
                    defer { socket.close() }
                    let deadline = ContinuousClock.now + .seconds(10)
                    do {
                        if !bytes.isEmpty { try socket.send(bytes, deadline: deadline) }
                    } catch ControlError.system(call: "send", _, let e) where answerMayCutSend && (e == .brokenPipe || e == .connectionReset) {
                        // The answer is already in our receive queue.
                    }
                    return String(decoding: try socket.readLine(limit: 1 << 20, deadline: deadline), as: UTF8.self)
                })
            }
        }
    }

    @Test("status round trip; socket is 0600; stop removes it")
    func roundTrip() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/control.sock"
        let server = try Self.server(path)
        let report = try await ControlClient(path: path).status()
        #expect(report == Self.makeReport())
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        await server.stop()
        #expect(!FileManager.default.fileExists(atPath: path))
        await #expect(throws: ControlError.noPeerRunning(path: path, stale: false)) { try await ControlClient(path: path).status() }
    }

    @Test("a stale socket is replaced, a live peer's socket is not")
    func staleAndLive() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/control.sock"
        // Bound but never listening: what a killed peer leaves behind.
        let leftover = try UnixSocket.make(path: path)
        try leftover.bindPrivately()
        leftover.close()
        await #expect(throws: ControlError.noPeerRunning(path: path, stale: true)) { try await ControlClient(path: path).status() }

        let first = try Self.server(path)
        #expect(throws: ControlError.alreadyRunning(path: path)) { _ = try Self.server(path) }
        #expect(try await ControlClient(path: path).status() == Self.makeReport())
        await first.stop()
    }

    @Test("refuses to replace a file that is not a socket")
    func notASocket() throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/control.sock"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8)))
        #expect(throws: ControlError.notASocket(path: path)) { _ = try Self.server(path) }
        #expect(FileManager.default.contents(atPath: path) == Data("keep me".utf8))
    }

    @Test("bad, oversized and unknown requests get an error and the server keeps serving")
    func badRequests() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/control.sock"
        let server = try Self.server(path)
        #expect(try await Self.rawExchange(path, Array("hello\n".utf8)).contains("\"error\""))
        let huge = [UInt8](repeating: UInt8(ascii: "x"), count: ControlServer.requestLimit + 10) + [10]
        let answer = try await Self.rawExchange(path, huge, answerMayCutSend: true)
        #expect(answer.contains("\"error\"") && answer.contains("\(ControlServer.requestLimit)-byte limit"), "\(answer)")
        let unknown = try await ControlClient(path: path).send(ControlRequest(command: "reboot"))
        #expect(unknown == .error("unknown command 'reboot'"))
        #expect(try await ControlClient(path: path).status() == Self.makeReport())
        await server.stop()
    }

    @Test("a silent client is cut off after the I/O timeout; the next one is served")
    func silentClient() async throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/control.sock"
        let server = try Self.server(path)
        let start = ContinuousClock.now
        let line = try await Self.rawExchange(path, [])
        #expect(line.contains("timed out"))
        #expect(start.duration(to: .now) < .seconds(5))
        #expect(try await ControlClient(path: path).status() == Self.makeReport())
        await server.stop()
    }
}
