@testable import MemReplica
@testable import MemReplicaHTTP3
@testable import MemReplicaSystem
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A `memreplica peer` process exporting one region of known bytes, with
/// certificates for it, for a client ("reader") under the same CA, and for
/// an intruder under a CA of its own.
private struct HTTP3Peer {
    static let size = 300_000, chunkSize = 64 << 10
    let root: String
    let pki: TestPKI
    let foreign: TestPKI
    let port: UInt16
    let bytes: [UInt8]
    let process: ChildProcess

    /// `arguments` go to `memreplica peer` after the export of "r"; `allow`
    /// is r's allow= list (CN+CN), if any.
    init(arguments: [String] = [], allow: String? = nil) async throws {
        root = NSTemporaryDirectory() + "mr-h3-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        pki = try TestPKI(peers: ("primary", "reader"))
        foreign = try TestPKI(peers: ("other", "intruder"))
        bytes = patternBytes(count: Self.size, seed: 31)
        try Data(bytes).write(to: URL(fileURLWithPath: root + "/region.bin"))
        port = unusedUDPPort()
        let control = root + "/control.sock"
        process = try ChildProcess(builtExecutable(), [
            "peer", "--listen", "127.0.0.1:\(port)", "--state-dir", root, "--control", control,
            "--cert", pki.server.certificate, "--key", pki.server.key, "--ca", pki.server.tls.caFile,
            "--export", "r=\(root)/region.bin,chunk=\(Self.chunkSize)" + (allow.map { ",allow=\($0)" } ?? ""),
            "--log-level", "warning",
        ] + arguments)
        // The control socket comes up after the endpoint serves HTTP/3.
        let deadline = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: control) {
            guard ContinuousClock.now < deadline else {
                stop()
                throw TimeoutError(what: "starting the peer", seconds: 30)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func stop() {
        process.terminate(grace: .milliseconds(500))
        pki.remove()
        foreign.remove()
        try? FileManager.default.removeItem(atPath: root)
    }

    /// A second peer process ("replica", same CA) mirroring "r" into
    /// `path` (through `primaryPort`, a relay, when given); returns it, its
    /// port and its control socket.
    func startReplica(into path: String, lazy: Bool, primaryPort: UInt16? = nil, options: String = "") throws
        -> (process: ChildProcess, port: UInt16, control: String) {
        let files = try CertificateAuthority.initialize(directory: pki.directory, peers: ["replica"])[0]
        let replicaPort = unusedUDPPort()
        let control = root + "/replica.sock"
        let process = try ChildProcess(builtExecutable(), [
            "peer", "--listen", "127.0.0.1:\(replicaPort)", "--state-dir", root + "/replica-state", "--control", control,
            "--cert", files.certificate, "--key", files.key, "--ca", files.tls.caFile,
            "--mirror", "r@127.0.0.1:\(primaryPort ?? port)=\(path)" + options, "--log-level", "warning",
        ] + (lazy ? ["--lazy"] : []))
        return (process, replicaPort, control)
    }

    func chunk(_ index: Int) -> [UInt8] {
        Array(bytes[index * Self.chunkSize..<min(Self.size, (index + 1) * Self.chunkSize)])
    }

    /// Runs a shell command line; its exit status and stdout (stderr goes
    /// to a file, shown on failure).
    func run(_ command: String) throws -> (status: Int32, stdout: String, stderr: String) {
        let id = UUID().uuidString.prefix(6)
        let out = root + "/out-\(id)", err = root + "/err-\(id)"
        let child = try ChildProcess("/bin/sh", ["-c", "exec \(command) >'\(out)' 2>'\(err)'"])
        let status = child.wait()
        return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    }

    /// scripts/h3get.py (aioquic) against the peer; one reply per path.
    func aioquic(_ paths: [String], method: String = "GET", cert: CertificateAuthority.PeerFiles?, port: UInt16? = nil,
                 options: String = "") throws -> (status: Int32, replies: [AioquicReply], output: String) {
        try requireAioquic()
        var command = "timeout 30 python3 '\(Self.repository)/scripts/h3get.py' --ca '\(pki.server.tls.caFile)'"
            + " --server-name primary --method \(method) \(options)"
        if let cert { command += " --cert '\(cert.certificate)' --key '\(cert.key)'" }
        command += " 127.0.0.1:\(port ?? self.port) " + paths.map { "'\($0)'" }.joined(separator: " ")
        let result = try run(command)
        let replies = result.stdout.split(separator: "\n").compactMap {
            try? JSONDecoder().decode(AioquicReply.self, from: Data($0.utf8))
        }
        return (result.status, replies, result.stdout + result.stderr)
    }

    func requireAioquic() throws {
        let probe = try run("python3 -c 'import aioquic'")
        try #require(probe.status == 0, "aioquic is missing (scripts/install-deps.sh installs it): \(probe.stderr)")
    }

    /// Debian's ngtcp2 example client; bodies land in `directory`, named
    /// after each path's last component. Not `quiet`, its log shows frames
    /// (the CONNECTION_CLOSE that refuses it).
    func gtlsclient(_ paths: [String], cert: CertificateAuthority.PeerFiles?, into directory: String,
                    quiet: Bool = true) throws
        -> (status: Int32, output: String) {
        let which = try run("sh -c 'command -v gtlsclient'")
        try #require(which.status == 0, "gtlsclient is missing: install Debian's ngtcp2-client (scripts/install-deps.sh)")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var command = "timeout 30 gtlsclient \(quiet ? "--quiet" : "--no-quic-dump --no-http-dump")"
            + " --exit-on-all-streams-close --timeout=10s --download '\(directory)'"
        if let cert { command += " --cert '\(cert.certificate)' --key '\(cert.key)'" }
        command += " 127.0.0.1 \(port) " + paths.map { "'https://127.0.0.1:\(port)\($0)'" }.joined(separator: " ")
        let result = try run(command)
        return (result.status, result.stdout + result.stderr)
    }

    static let repository: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
}

private struct AioquicReply: Decodable {
    var path: String?
    var status: Int?
    var contentType: String?
    var length: Int?
    var sha256: String?
    var text: String?
    var headers: [String: String]?
    var refused: String?
}

@Suite("HTTP3: the peer's HTTP/3 face, fetched by clients nobody here wrote", .serialized)
struct HTTP3Tests {
    /// The documented top-level keys of `stats --json` (README, Statistics).
    static let statsKeys = ["version", "peer", "takenAt", "uptimeSeconds", "windowSeconds", "connections", "regions"]

    @Test("aioquic fetches /stats (stats --json), /regions and chunks whose SHA-256 equals the region's")
    func aioquicFetches() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        let last = (HTTP3Peer.size - 1) / HTTP3Peer.chunkSize
        let result = try peer.aioquic(["/stats", "/regions", "/regions/r/chunks/1", "/regions/r/chunks/\(last)"],
                                      cert: peer.pki.client)
        try #require(result.status == 0 && result.replies.count == 4, "h3get.py failed: \(result.output)")
        let (stats, regions, chunk, tail) = (result.replies[0], result.replies[1], result.replies[2], result.replies[3])

        #expect(stats.status == 200)
        #expect(stats.contentType == "application/json")
        let statsJSON = Data((stats.text ?? "").utf8)
        let object = try #require(try JSONSerialization.jsonObject(with: statsJSON) as? [String: Any])
        for key in Self.statsKeys { #expect(object[key] != nil, "stats JSON lacks \(key)") }
        let report = try StatusReport.makeDecoder().decode(StatsReport.self, from: statsJSON)
        #expect(report.peer == "primary")
        #expect(report.regions.map(\.name) == ["r"])
        #expect(report.regions.first?.size == HTTP3Peer.size)
        // The HTTP/3 connection asking is itself one of the peer's connections.
        #expect(report.connections.contains { $0.peer == "reader" })

        #expect(regions.status == 200)
        let listing = try JSONDecoder().decode([RegionListing].self, from: Data((regions.text ?? "").utf8))
        #expect(listing == [RegionListing(name: "r", role: "primary", size: HTTP3Peer.size, chunkSize: HTTP3Peer.chunkSize,
                                          chunks: last + 1)])

        #expect(chunk.status == 200)
        #expect(chunk.contentType == "application/octet-stream")
        #expect(chunk.length == HTTP3Peer.chunkSize)
        #expect(chunk.sha256 == sha256Hex(peer.chunk(1)))
        #expect(chunk.headers?["content-length"] == String(HTTP3Peer.chunkSize))
        #expect(chunk.headers?["cache-control"] == "no-store")
        // The last chunk is short: only the region's bytes, no padding.
        #expect(tail.status == 200)
        #expect(tail.length == HTTP3Peer.size - last * HTTP3Peer.chunkSize)
        #expect(tail.sha256 == sha256Hex(peer.chunk(last)))
    }

    @Test("gtlsclient (ngtcp2's client, nghttp3) downloads /stats and a chunk equal to the region's")
    func gtlsclientFetches() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        let directory = peer.root + "/download"
        let result = try peer.gtlsclient(["/stats", "/regions/r/chunks/2"], cert: peer.pki.client, into: directory)
        #expect(result.status == 0, "gtlsclient: \(result.output)")
        let chunk = try #require(FileManager.default.contents(atPath: directory + "/2"), "no chunk downloaded: \(result.output)")
        #expect(sha256Hex(Array(chunk)) == sha256Hex(peer.chunk(2)))
        let stats = try #require(FileManager.default.contents(atPath: directory + "/stats"), "no stats downloaded: \(result.output)")
        let report = try StatusReport.makeDecoder().decode(StatsReport.self, from: stats)
        #expect(report.peer == "primary")
        #expect(report.regions.first?.chunkSize == HTTP3Peer.chunkSize)
    }

    @Test("a client without a certificate, or with one from another CA, is refused by both clients' accounts")
    func refusesClientsWithoutValidCertificate() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        // TLS alert 116 (certificate_required) is QUIC error 0x100 + 116.
        let anonymous = try peer.aioquic(["/stats"], cert: nil)
        #expect(anonymous.status == 2, "\(anonymous.output)")
        #expect(anonymous.replies.first?.refused == "0x174", "\(anonymous.output)")
        #expect(!anonymous.replies.contains { $0.status != nil })

        // The intruder trusts our CA for the server, but its own CA signed its certificate.
        let intruder = try peer.aioquic(["/stats"], cert: peer.foreign.client)
        #expect(intruder.status == 2, "\(intruder.output)")
        // Alert 42 (bad_certificate): the chain does not verify against our CA.
        #expect(intruder.replies.first?.refused == "0x12a", "\(intruder.output)")
        #expect(!intruder.replies.contains { $0.status != nil })

        // (The same alerts as for aioquic: 116 without a certificate, 42 for
        // another CA's.) gtlsclient sends its request in its first 1-RTT flight, before the
        // server has checked its certificate, and creates the download file
        // then: the file must stay empty, and the peer must close the
        // connection with a TLS alert (CRYPTO_ERROR 0x100 + alert).
        for (name, cert, alert) in [("anonymous", nil, "0x174"), ("intruder", peer.foreign.client, "0x12a")]
            as [(String, CertificateAuthority.PeerFiles?, String)] {
            let directory = peer.root + "/download-\(name)"
            let result = try peer.gtlsclient(["/regions/r/chunks/0"], cert: cert, into: directory, quiet: false)
            let files = try FileManager.default.contentsOfDirectory(atPath: directory)
            let received = try files.map { try FileManager.default.attributesOfItem(atPath: directory + "/" + $0)[.size] as? Int ?? -1 }
            #expect(received.allSatisfy { $0 == 0 }, "gtlsclient as \(name) received \(received) bytes: \(result.output)")
            let closes = result.output.split(separator: "\n").filter { $0.contains("frm rx") && $0.contains("CONNECTION_CLOSE") }
            #expect(closes.contains { $0.contains("CRYPTO_ERROR(\(alert)") },
                    "gtlsclient as \(name) was not refused with a TLS alert: \(closes)")
        }

        // The same client with its certificate is served: the refusals were about the certificate.
        let reader = try peer.aioquic(["/regions/r/chunks/0"], cert: peer.pki.client)
        #expect(reader.replies.first?.sha256 == sha256Hex(peer.chunk(0)), "\(reader.output)")
    }

    @Test("a client that closes its control stream gets CONNECTION_CLOSE with H3_CLOSED_CRITICAL_STREAM; the peer serves the next client")
    func criticalStreamClosed() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        try peer.requireAioquic()
        // RFC 9114 §6.2.1: closing a control stream is a connection error.
        let script = peer.root + "/close-control.py"
        try Data("""
            import asyncio, ssl, sys
            from aioquic.asyncio import connect
            from aioquic.asyncio.protocol import QuicConnectionProtocol
            from aioquic.h3.connection import H3_ALPN, H3Connection
            from aioquic.quic.configuration import QuicConfiguration
            from aioquic.quic.events import ConnectionTerminated

            class Client(QuicConnectionProtocol):
                def __init__(self, *a, **k):
                    super().__init__(*a, **k)
                    self.h3 = H3Connection(self._quic)
                    self.closed = self._loop.create_future()
                def quic_event_received(self, event):
                    if isinstance(event, ConnectionTerminated) and not self.closed.done():
                        self.closed.set_result(event.error_code)
                    self.h3.handle_event(event)

            async def main():
                ca, cert, key, port = sys.argv[1:5]
                config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="primary")
                config.load_verify_locations(cafile=ca)
                config.verify_mode = ssl.CERT_REQUIRED
                config.load_cert_chain(cert, key)
                async with connect("127.0.0.1", int(port), configuration=config, create_protocol=Client) as client:
                    client._quic.send_stream_data(client.h3._local_control_stream_id, b"", end_stream=True)
                    client.transmit()
                    print(hex(await asyncio.wait_for(client.closed, timeout=10)))

            asyncio.run(main())
            """.utf8).write(to: URL(fileURLWithPath: script))
        let result = try peer.run("timeout 30 python3 '\(script)' '\(peer.pki.server.tls.caFile)' '\(peer.pki.client.certificate)' "
                                  + "'\(peer.pki.client.key)' \(peer.port)")
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0x104", "\(result.stdout)\(result.stderr)")

        let next = try peer.aioquic(["/regions/r/chunks/0"], cert: peer.pki.client)
        #expect(next.replies.first?.sha256 == sha256Hex(peer.chunk(0)), "\(next.output)")
    }

    @Test("404 for an unknown region, a chunk out of range or an unknown path; 405 for POST; 414 for a long path")
    func badRequests() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        let chunks = (HTTP3Peer.size + HTTP3Peer.chunkSize - 1) / HTTP3Peer.chunkSize
        let longPath = "/regions/" + String(repeating: "x", count: HTTP3Limits.maxPathBytes) + "/chunks/0"
        let paths = ["/regions/nope/chunks/0", "/regions/r/chunks/\(chunks)", "/regions/r/chunks/-1", "/regions/r/chunks/one",
                     "/metrics", "/", longPath, "/stats"]
        let result = try peer.aioquic(paths, cert: peer.pki.client)
        try #require(result.replies.count == paths.count, "h3get.py: \(result.output)")
        #expect(result.replies.map(\.status) == [404, 404, 404, 404, 404, 404, 414, 200])
        #expect(result.replies[0].text?.contains("no region named 'nope'") == true)
        #expect(result.replies[1].text?.contains("outside 'r' (\(chunks) chunks)") == true)

        let post = try peer.aioquic(["/stats", "/regions/r/chunks/0"], method: "POST", cert: peer.pki.client)
        #expect(post.replies.map(\.status) == [405, 405], "\(post.output)")
        #expect(post.replies.first?.text?.contains("read-only") == true)
        #expect(post.replies.allSatisfy { $0.headers?["allow"] == "GET" })
    }
}

@Suite("HTTP3: limits, allow lists and replicas", .serialized)
struct HTTP3LimitTests {
    @Test("past 16 requests open at once on a connection: 503 with Retry-After, the rest served; a header section over 16 KiB: 431")
    func requestLimits() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        let count = HTTP3Limits.maxConcurrentRequests + 8
        // All sent before any answer is read: every request is open at once.
        let result = try peer.aioquic(Array(repeating: "/regions/r/chunks/0", count: count), cert: peer.pki.client,
                                      options: "--parallel")
        try #require(result.replies.count == count, "h3get.py: \(result.output)")
        let served = result.replies.filter { $0.status == 200 }, refused = result.replies.filter { $0.status == 503 }
        #expect(served.count + refused.count == count)
        #expect(served.count >= HTTP3Limits.maxConcurrentRequests)
        #expect(!refused.isEmpty, "\(count) requests at once were all served")
        #expect(served.allSatisfy { $0.sha256 == sha256Hex(peer.chunk(0)) })
        #expect(refused.allSatisfy { $0.text?.contains("too many concurrent requests") == true })
        #expect(refused.allSatisfy { $0.headers?["retry-after"] == "1" })

        let big = String(repeating: "a", count: HTTP3Limits.maxHeaderSectionBytes)
        let fits = String(repeating: "a", count: HTTP3Limits.maxHeaderSectionBytes - 1024)
        let headers = try peer.aioquic(["/stats"], cert: peer.pki.client, options: "-H 'x-padding:\(big)'")
        #expect(headers.replies.map(\.status) == [431], "\(headers.output)")
        let near = try peer.aioquic(["/stats"], cert: peer.pki.client, options: "-H 'x-padding:\(fits)'")
        #expect(near.replies.map(\.status) == [200], "\(near.output)")
    }

    @Test("an export's allow= list hides the region from a certificate name not on it: chunks 404, absent from /regions and /stats")
    func allowList() async throws {
        let privatePath = NSTemporaryDirectory() + "mr-h3-private-\(UUID().uuidString.prefix(6)).bin"
        defer { try? FileManager.default.removeItem(atPath: privatePath) }
        let peer = try await HTTP3Peer(arguments: ["--export", "private=\(privatePath),size=65536,allow=someone-else"])
        defer { peer.stop() }
        let result = try peer.aioquic(["/regions/private/chunks/0", "/regions/r/chunks/0", "/regions", "/stats"],
                                      cert: peer.pki.client)
        try #require(result.replies.count == 4, "h3get.py: \(result.output)")
        // The same answer as for a region that does not exist.
        #expect(result.replies[0].status == 404)
        #expect(result.replies[0].text?.contains("no region named 'private'") == true)
        #expect(result.replies[1].status == 200)
        let listing = try JSONDecoder().decode([RegionListing].self, from: Data((result.replies[2].text ?? "").utf8))
        #expect(Set(listing.map(\.name)) == ["r"])
        let stats = try StatusReport.makeDecoder().decode(StatsReport.self, from: Data((result.replies[3].text ?? "").utf8))
        #expect(Set(stats.regions.map(\.name)) == ["r"])
        #expect(result.replies[3].text?.contains("private") == false)
    }

    @Test("an eager replica serves the chunks it mirrored: equal to the primary's, listed as a replica")
    func eagerReplicaServesChunks() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        let (replica, replicaPort, _) = try peer.startReplica(into: peer.root + "/replica.bin", lazy: false)
        defer { replica.terminate(grace: .milliseconds(500)) }
        let chunks = (HTTP3Peer.size + HTTP3Peer.chunkSize - 1) / HTTP3Peer.chunkSize
        // Synced when the replica's own listing says every chunk is present.
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let listing = try? peer.aioquic(["/regions"], cert: peer.pki.client, port: replicaPort, options: "--server-name replica")
            let regions = listing?.replies.first?.text.flatMap { try? JSONDecoder().decode([RegionListing].self, from: Data($0.utf8)) }
            if let r = regions?.first, r.chunksPresent == chunks {
                #expect(r == RegionListing(name: "r", role: "replica", size: HTTP3Peer.size, chunkSize: HTTP3Peer.chunkSize,
                                           chunks: chunks, chunksPresent: chunks, lazy: false, synced: true))
                break
            }
            try #require(ContinuousClock.now < deadline, "the replica never synced: \(listing?.output ?? "")")
            try await Task.sleep(for: .milliseconds(200))
        }
        let paths = (0..<chunks).map { "/regions/r/chunks/\($0)" }
        let result = try peer.aioquic(paths, cert: peer.pki.client, port: replicaPort, options: "--server-name replica")
        try #require(result.replies.count == chunks, "h3get.py: \(result.output)")
        for (i, reply) in result.replies.enumerated() {
            #expect(reply.status == 200)
            #expect(reply.sha256 == sha256Hex(peer.chunk(i)), "chunk \(i)")
        }
    }
}

@Suite("HTTP3: a lazy replica's face", .serialized)
struct HTTP3LazyReplicaTests {
    @Test("a lazy replica answers 503 with Retry-After for chunks it does not hold, never waiting on the primary; once pulled, the primary's bytes")
    func lazyReplicaServesPresentChunks() async throws {
        let peer = try await HTTP3Peer()
        defer { peer.stop() }
        let shm = "/dev/shm/mr-h3-\(UUID().uuidString.prefix(8))"
        defer { unlink(shm) }
        // A long path, so that between the mirror learning the region's
        // geometry and the first chunk arriving there are round trips in
        // which to cut the cable.
        let relay = UDPRelay(toServerPort: peer.port, oneWayDelay: .milliseconds(300))
        defer { relay.stop() }
        let (replica, replicaPort, control) = try peer.startReplica(into: shm, lazy: true, primaryPort: relay.port)
        defer { replica.terminate(grace: .milliseconds(500)) }
        let chunks = (HTTP3Peer.size + HTTP3Peer.chunkSize - 1) / HTTP3Peer.chunkSize
        let paths = (0..<chunks).map { "/regions/r/chunks/\($0)" }
        let replicaControl = ControlClient(path: control)
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? await replicaControl.stats().regions.first?.size) ?? 0 == 0 {
            try #require(ContinuousClock.now < deadline, "the lazy replica never learnt the region")
            try await Task.sleep(for: .milliseconds(5))
        }
        relay.cut()
        // Datagrams the relay took before the cut still arrive, one delay
        // later: count what is present once they have.
        try await Task.sleep(for: .milliseconds(800))
        let present = try #require(try await replicaControl.stats().regions.first?.chunksPresent)
        try #require(present < chunks, "every chunk arrived before the cut (\(present))")

        let cutOff = try peer.aioquic(paths, cert: peer.pki.client, port: replicaPort, options: "--server-name replica")
        try #require(cutOff.replies.count == chunks, "h3get.py: \(cutOff.output)")
        let missing = cutOff.replies.filter { $0.status == 503 }
        #expect(missing.count >= chunks - present, "\(cutOff.replies.map(\.status))")
        for reply in missing {
            #expect(reply.headers?["retry-after"] == "1")
            // Not pulled yet, or held from before but unconfirmed while the
            // primary is out of reach: either way not served as current.
            #expect(reply.text?.contains("of lazy replica 'r' is not here yet") == true
                    || reply.text?.contains("replica 'r' is not synced with its primary") == true, "\(reply.text ?? "")")
        }
        for (i, reply) in cutOff.replies.enumerated() where reply.status != 503 {
            #expect(reply.status == 200 && reply.sha256 == sha256Hex(peer.chunk(i)), "chunk \(i)")
        }

        relay.restore()
        while true {
            let result = try peer.aioquic(paths, cert: peer.pki.client, port: replicaPort, options: "--server-name replica")
            try #require(result.replies.count == chunks, "h3get.py: \(result.output)")
            for (i, reply) in result.replies.enumerated() where reply.status != 503 {
                #expect(reply.status == 200 && reply.sha256 == sha256Hex(peer.chunk(i)), "chunk \(i)")
            }
            if result.replies.allSatisfy({ $0.status == 200 }) { break }
            try #require(ContinuousClock.now < deadline, "the lazy replica never served every chunk")
            try await Task.sleep(for: .milliseconds(100))
        }
        let listing = try peer.aioquic(["/regions"], cert: peer.pki.client, port: replicaPort, options: "--server-name replica")
        let regions = try JSONDecoder().decode([RegionListing].self, from: Data((listing.replies.first?.text ?? "").utf8))
        #expect(regions == [RegionListing(name: "r", role: "replica", size: HTTP3Peer.size, chunkSize: HTTP3Peer.chunkSize,
                                          chunks: chunks, chunksPresent: chunks, lazy: true, synced: true)])
    }
}

@Suite("HTTP3: a replica applies its primary's allow list", .serialized)
struct HTTP3ReplicaAllowTests {
    /// Waits until the replica's own control socket says it is synced.
    private func waitSynced(_ control: String) async throws {
        let client = ControlClient(path: control)
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? await client.stats().regions.first?.synced) != true {
            try #require(ContinuousClock.now < deadline, "the replica never synced")
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    @Test("a region exported with allow=replica and mirrored by it: another CA-signed peer reads nothing of it from the replica")
    func replicaEnforcesPrimaryAllowList() async throws {
        let peer = try await HTTP3Peer(allow: "replica")
        defer { peer.stop() }
        let (replica, replicaPort, control) = try peer.startReplica(into: peer.root + "/replica.bin", lazy: false)
        defer { replica.terminate(grace: .milliseconds(500)) }
        try await waitSynced(control)
        // "reader" holds a certificate from the same CA, but is not on r's list.
        let fromReplica = try peer.aioquic(["/regions/r/chunks/0", "/regions", "/stats"], cert: peer.pki.client,
                                           port: replicaPort, options: "--server-name replica")
        try #require(fromReplica.replies.count == 3, "h3get.py: \(fromReplica.output)")
        #expect(fromReplica.replies[0].status == 404, "\(fromReplica.replies[0])")
        let listing = try JSONDecoder().decode([RegionListing].self, from: Data((fromReplica.replies[1].text ?? "").utf8))
        #expect(listing.isEmpty)
        let stats = try StatusReport.makeDecoder().decode(StatsReport.self, from: Data((fromReplica.replies[2].text ?? "").utf8))
        #expect(stats.regions.isEmpty)
        // Nor from the primary itself.
        let fromPrimary = try peer.aioquic(["/regions/r/chunks/0"], cert: peer.pki.client)
        #expect(fromPrimary.replies.map(\.status) == [404])
    }

    @Test("a replica may narrow its primary's allow list (allow= on --mirror), never widen it")
    func replicaNarrowsNeverWidens() async throws {
        // The primary lets anyone read; the replica only "nobody-here".
        let open = try await HTTP3Peer()
        defer { open.stop() }
        let (narrow, narrowPort, narrowControl) = try open.startReplica(into: open.root + "/narrow.bin", lazy: false,
                                                                        options: ",allow=nobody-here")
        defer { narrow.terminate(grace: .milliseconds(500)) }
        try await waitSynced(narrowControl)
        let narrowed = try open.aioquic(["/regions/r/chunks/0"], cert: open.pki.client, port: narrowPort,
                                        options: "--server-name replica")
        #expect(narrowed.replies.map(\.status) == [404], "\(narrowed.output)")
        #expect(try open.aioquic(["/regions/r/chunks/0"], cert: open.pki.client).replies.map(\.status) == [200])

        // The primary lets only "replica" read; the replica's allow=reader cannot add "reader".
        let closed = try await HTTP3Peer(allow: "replica")
        defer { closed.stop() }
        let (wide, widePort, wideControl) = try closed.startReplica(into: closed.root + "/wide.bin", lazy: false,
                                                                    options: ",allow=reader")
        defer { wide.terminate(grace: .milliseconds(500)) }
        try await waitSynced(wideControl)
        let widened = try closed.aioquic(["/regions/r/chunks/0"], cert: closed.pki.client, port: widePort,
                                         options: "--server-name replica")
        #expect(widened.replies.map(\.status) == [404], "\(widened.output)")
    }
}
