import MemReplica
import QuicShim
import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import Foundation
import Logging

/// `memreplica bench transport`: bulk throughput and request/response
/// latency of our transports on loopback (QUIC, and the TLS/TCP transport
/// with one TCP connection or one per stream), measured side by side in one
/// run with two references: ngtcp2's own example programs (gtlsserver and
/// gtlsclient, HTTP/3 download of the same bytes) as the anchor, and bare
/// TLS 1.3 over TCP (OpenSSL, no mux) as the ceiling.
public struct TransportBenchmark {
    public struct Options: Sendable {
        public var totalBytes = 256 << 20
        public var streams = 8
        public var runs = 5
        public var latencyIterations = 2000
        public var requestBytes = 16
        public var responseBytes = 4096
        /// Connections per handshake measurement (full, resumed, 0-RTT).
        public var handshakeIterations = 200
        public var includeStockNgtcp2 = true
        public var includeTLSOverTCP = true
        public var quic = QUICConfiguration()
        /// Our transports to measure; QUIC first is what the ratios use.
        public var transports: [TransportKind] = TransportKind.allCases
        public init() {}
    }

    public struct Throughput: Codable, Sendable {
        public var name: String
        /// MB/s (10^6 bytes per second) of each run, in order.
        public var runsMBps: [Double]
        public var medianMBps: Double
    }

    public struct Latency: Codable, Sendable {
        public var name: String
        public var samples: Int
        public var p50Microseconds: Double
        public var p99Microseconds: Double
        public var minMicroseconds: Double
    }

    public struct Report: Codable, Sendable {
        public var totalBytes: Int
        public var streams: Int
        public var runs: Int
        public var congestionControl: String
        public var maxUDPPayloadSize: Int
        /// What the peers here (both on this host) actually send: nil means
        /// `maxUDPPayloadSize`, as to a peer elsewhere.
        public var hostLocalUDPPayloadSize: Int?
        public var ngtcp2Version: String
        public var throughput: [Throughput]
        public var latency: [Latency]
        /// Connect and first-response times: full handshake, resumed
        /// session, and a request sent in 0-RTT.
        public var handshakes: [Latency]
        /// Our QUIC median divided by each reference's median, same run.
        /// Also resumed over full handshake times (`resumed_*`).
        public var ratios: [String: Double]
    }

    public let options: Options
    let peers: BenchPeers
    let log: @Sendable (String) -> Void

    public init(options: Options, workDirectory: String, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        peers = try BenchPeers(workDirectory: workDirectory)
    }

    public func run() async throws -> Report {
        var throughput: [Throughput] = []
        var ours: [TransportKind: [Double]] = [:]
        var stockRuns: [Double] = [], tcpRuns: [Double] = []
        let stock = options.includeStockNgtcp2 ? try StockNgtcp2Download(pki: peers.pki, totalBytes: options.totalBytes,
                                                                           files: options.streams) : nil
        defer { stock?.stop() }
        // Interleave the contenders run by run so drift in machine load hits
        // all of them alike.
        for run in 1...options.runs {
            var line = "run \(run):"
            for kind in options.transports {
                let t = try await measureThroughput(kind)
                ours[kind, default: []].append(t)
                line += " memreplica \(label(kind)) \(fmt(t)) MB/s,"
            }
            if let stock {
                let s = try stock.measure()
                stockRuns.append(s)
                line += " ngtcp2 examples \(fmt(s)) MB/s,"
            }
            if options.includeTLSOverTCP {
                let seconds = try TLSOverTCPBaseline(tls: peers.clientTLS)
                    .measureThroughput(totalBytes: options.totalBytes)
                let t = Double(options.totalBytes) / seconds / 1e6
                tcpRuns.append(t)
                line += " TLS/TCP \(fmt(t)) MB/s"
            }
            log(line.hasSuffix(",") ? String(line.dropLast()) : line)
        }
        for kind in options.transports {
            let runs = ours[kind] ?? []
            throughput.append(Throughput(name: "memreplica \(label(kind))", runsMBps: runs, medianMBps: median(runs)))
        }
        let quicRuns = ours[.quic] ?? []
        var ratios: [String: Double] = [:]
        for kind in options.transports where kind != .quic && !quicRuns.isEmpty {
            ratios["quic_over_memreplica_\(kind.rawValue.replacingOccurrences(of: "-", with: "_"))"] =
                median(quicRuns) / median(ours[kind] ?? [])
        }
        if !stockRuns.isEmpty && !quicRuns.isEmpty {
            throughput.append(Throughput(name: "ngtcp2 gtlsserver/gtlsclient HTTP/3", runsMBps: stockRuns, medianMBps: median(stockRuns)))
            ratios["quic_over_ngtcp2_examples"] = median(quicRuns) / median(stockRuns)
        }
        if !tcpRuns.isEmpty && !quicRuns.isEmpty {
            throughput.append(Throughput(name: "TLS 1.3 over TCP (OpenSSL)", runsMBps: tcpRuns, medianMBps: median(tcpRuns)))
            ratios["quic_over_tls_tcp"] = median(quicRuns) / median(tcpRuns)
        }

        var latency: [Latency] = []
        // The floors: the same request and response over bare loopback UDP
        // and TCP to a second process (no crypto, no framing).
        let served = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { served.deallocate() }
        served.initializeMemory(as: UInt8.self, repeating: 0x5a)
        let floorPeer = try PageServerProcess(serving: UnsafeRawBufferPointer(served))
        defer { floorPeer.stop() }
        for kind in [PageServerProcess.Kind.udp, .tcp] {
            let samples = try await floorPeer.roundTrips(kind, iterations: options.latencyIterations,
                                                         responseBytes: options.responseBytes, sourceBytes: served.count)
            latency.append(summarize("floor: bare \(kind.rawValue.uppercased()), a second process", samples))
        }
        for kind in options.transports { latency += try await latencies(kind) }
        if options.transports.contains(.quic) {
            let (server, client) = try peers.endpoints(options.quic)
            let samples = try await LoopServedRequests(request: options.requestBytes, response: options.responseBytes)
                .measure(server: server, client: client, iterations: options.latencyIterations,
                         warmup: min(200, options.latencyIterations))
            await client.close()
            await server.close()
            latency.append(summarize(Self.loopServedRow, samples))
        }
        if options.includeTLSOverTCP {
            let samples = try TLSOverTCPBaseline(tls: peers.clientTLS)
                .measureLatency(iterations: options.latencyIterations, request: options.requestBytes,
                                response: options.responseBytes)
            latency.append(summarize("TLS/TCP, one connection", samples))
        }
        for (prefix, row) in [("quic_request", "QUIC, one long-lived stream"), ("quic_loop_request", Self.loopServedRow)] {
            guard let quic = latency.first(where: { $0.name == row }) else { continue }
            for (key, name) in [("udp", "floor: bare UDP, a second process"), ("tcp", "floor: bare TCP, a second process"),
                                ("tls_tcp", "TLS/TCP, one connection")] {
                if let other = latency.first(where: { $0.name == name }), other.p50Microseconds > 0 {
                    ratios["\(prefix)_p50_over_\(key)"] = quic.p50Microseconds / other.p50Microseconds
                }
            }
        }
        for l in latency {
            log("latency \(l.name): p50 \(fmt(l.p50Microseconds)) µs, p99 \(fmt(l.p99Microseconds)) µs")
        }
        let handshakes = options.handshakeIterations > 0 ? try await quicHandshakes() : []
        for l in handshakes {
            log("handshake \(l.name): p50 \(fmt(l.p50Microseconds)) µs, p99 \(fmt(l.p99Microseconds)) µs")
        }
        if handshakes.count == 4 {
            ratios["resumed_over_full_handshake"] = handshakes[1].p50Microseconds / handshakes[0].p50Microseconds
            ratios["zero_rtt_over_full_first_byte"] = handshakes[3].p50Microseconds / handshakes[2].p50Microseconds
        }
        return Report(totalBytes: options.totalBytes, streams: options.streams, runs: options.runs,
                      congestionControl: options.quic.congestionControl.rawValue,
                      maxUDPPayloadSize: options.quic.maxUDPPayloadSize,
                      hostLocalUDPPayloadSize: options.quic.hostLocalUDPPayloadSize,
                      ngtcp2Version: String(cString: ngtcp2_version(0).pointee.version_str),
                      throughput: throughput, latency: latency, handshakes: handshakes, ratios: ratios)
    }

    /// MB/s for `totalBytes` over `streams` streams, connect included (as
    /// the stock client's time includes its handshake).
    private func measureThroughput(_ kind: TransportKind) async throws -> Double {
        let (server, client) = try peers.transports(kind, options.quic)
        defer { Task { await client.close(); await server.close() } }
        let sink = Task {
            guard let conn = await server.accept() else { return }
            await withTaskGroup(of: Void.self) { group in
                while let stream = try? await conn.acceptStream() {
                    group.addTask {
                        while let part = try? await stream.read(maxLength: 4 << 20), !part.isEmpty {}
                        try? await stream.write([1])
                        try? await stream.finish()
                    }
                }
            }
        }
        defer { sink.cancel() }
        let perStream = options.totalBytes / options.streams
        let block = [UInt8](repeating: 0xa5, count: 1 << 20)
        let start = monotonicNanoseconds()
        let conn = try await client.connect(to: PeerAddress(host: "127.0.0.1", port: server.localAddress.port))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<options.streams {
                group.addTask {
                    let stream = try await conn.openStream()
                    var sent = 0
                    while sent < perStream {
                        let n = min(block.count, perStream - sent)
                        if n == block.count { try await stream.write(block) } else { try await stream.write(Array(block.prefix(n))) }
                        sent += n
                    }
                    try await stream.finish()
                    _ = try await stream.readExactly(1)
                }
            }
            try await group.waitForAll()
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        await conn.close(errorCode: 0, reason: "")
        await client.close()
        await server.close()
        return Double(perStream * options.streams) / seconds / 1e6
    }

    /// The latency row of `LoopServedRequests`: the path fault reads take.
    static let loopServedRow = "QUIC, answered on the loops (fault reads' path)"

    private func latencies(_ kind: TransportKind) async throws -> [Latency] {
        let (server, client) = try peers.transports(kind, options.quic)
        let request = options.requestBytes, response = options.responseBytes
        let responder = Task {
            guard let conn = await server.accept() else { return }
            let reply = [UInt8](repeating: 0x33, count: response)
            await withTaskGroup(of: Void.self) { group in
                while let stream = try? await conn.acceptStream() {
                    group.addTask {
                        // Requests of `request` bytes until FIN, each answered.
                        while let _ = try? await stream.readExactly(request) {
                            try? await stream.write(reply)
                        }
                        try? await stream.finish()
                    }
                }
            }
        }
        defer { responder.cancel() }
        let conn = try await client.connect(to: PeerAddress(host: "127.0.0.1", port: server.localAddress.port))
        let req = [UInt8](repeating: 0x11, count: request)
        let warmup = min(200, options.latencyIterations)

        let stream = try await conn.openStream()
        var longLived: [UInt64] = []
        for i in 0..<(options.latencyIterations + warmup) {
            let t0 = monotonicNanoseconds()
            try await stream.write(req)
            _ = try await stream.readExactly(response)
            if i >= warmup { longLived.append(monotonicNanoseconds() - t0) }
        }
        try await stream.finish()

        var fresh: [UInt64] = []
        for i in 0..<(options.latencyIterations + warmup) {
            let t0 = monotonicNanoseconds()
            let s = try await conn.openStream()
            try await s.write(req)
            try await s.finish()
            _ = try await s.readExactly(response)
            if i >= warmup { fresh.append(monotonicNanoseconds() - t0) }
        }
        await conn.close(errorCode: 0, reason: "")
        await client.close()
        await server.close()
        return [summarize("\(label(kind)), one long-lived stream", longLived),
                summarize("\(label(kind)), a new stream per request", fresh)]
    }

    private func label(_ kind: TransportKind) -> String {
        switch kind {
        case .quic: return "QUIC"
        case .tcp: return "TLS/TCP mux"
        case .tcpPerRegion: return "TLS/TCP per stream"
        }
    }
}

extension TransportBenchmark {
    /// Connect time with a full handshake and with a resumed session, and
    /// the time to the first byte of a response when the request follows a
    /// full handshake versus when it rides in 0-RTT. Each connection is
    /// closed before the next; tickets are waited for outside the timing.
    func quicHandshakes() async throws -> [Latency] {
        let (server, client) = try peers.endpoints(options.quic)
        let request = options.requestBytes, response = options.responseBytes
        let responder = Task {
            let reply = [UInt8](repeating: 0x33, count: response)
            await withDiscardingTaskGroup { group in
                while let conn = await server.acceptQUIC() {
                    group.addTask {
                        while let stream = try? await conn.acceptStream() {
                            guard (try? await stream.readExactly(request)) != nil else { continue }
                            try? await stream.write(reply)
                            try? await stream.finish()
                        }
                    }
                }
            }
        }
        defer { responder.cancel() }
        let address = try PeerAddress(host: "127.0.0.1", port: server.localAddress.port)
        let req = [UInt8](repeating: 0x11, count: request)
        let n = options.handshakeIterations
        let warmup = min(20, n)

        /// Waits up to `seconds` for a ticket from the server; false if none came.
        func ticket(within seconds: Double) async throws -> Bool {
            let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
            while await client.sessionTicketCount(for: address) == 0 {
                guard monotonicNanoseconds() < deadline else { return false }
                try await Task.sleep(for: .microseconds(200))
            }
            return true
        }
        // A server now and then sends no ticket after a handshake (GnuTLS's
        // ticket send fails; seen about once in 60 resumed connections):
        // an untimed full connection then fetches one, and the report counts it.
        var missedTickets = 0
        // 0-RTT a server refused (its windows were smaller than the ticket's
        // connection had): those requests went again in 1-RTT.
        var refusedEarlyData = 0
        func ticket() async throws {
            if try await ticket(within: 1) { return }
            missedTickets += 1
            let extra = try await client.connectQUIC(to: address)
            defer { Task { await extra.close(errorCode: 0, reason: "") } }
            guard try await ticket(within: 5) else { throw TransportError.protocolFailure("no session ticket arrived") }
        }
        /// Times `body` `n` times after a warm-up; `resumed` says whether
        /// each run starts with the last connection's ticket or without any.
        func measure(resumed: Bool, _ body: () async throws -> QUICConnection) async throws -> [UInt64] {
            var samples: [UInt64] = []
            for i in 0..<(n + warmup) {
                if resumed { try await ticket() } else { await client.discardSessionTickets() }
                let t0 = monotonicNanoseconds()
                let conn = try await body()
                let t1 = monotonicNanoseconds()
                let stats = await conn.statistics()
                guard stats.sessionResumed == resumed else {
                    throw TransportError.protocolFailure("expected \(resumed ? "a resumed" : "a full") handshake")
                }
                if stats.earlyData == .rejected { refusedEarlyData += 1 }
                if i >= warmup { samples.append(t1 - t0) }
                // The server's ticket comes after the handshake: keep the
                // connection until it has (or a second has passed).
                _ = try await ticket(within: 1)
                await conn.close(errorCode: 0, reason: "")
            }
            return samples
        }

        let full = try await measure(resumed: false) { try await client.connectQUIC(to: address) }
        let resumed = try await measure(resumed: true) { try await client.connectQUIC(to: address) }
        let fullRequest = try await measure(resumed: false) {
            let conn = try await client.connectQUIC(to: address)
            let stream = try await conn.openQUICStream()
            try await stream.write(req)
            _ = try await stream.readExactly(1)
            return conn
        }
        let early = try await measure(resumed: true) {
            let (conn, stream) = try await client.connectQUIC(to: address, replaySafeEarlyData: req)
            _ = try await stream.readExactly(1)
            return conn
        }
        await client.close()
        await server.close()
        if refusedEarlyData > 0 {
            log("handshakes: the server refused 0-RTT on \(refusedEarlyData) connection(s); their requests went in 1-RTT")
        }
        if missedTickets > 0 {
            log("handshakes: \(missedTickets) connection(s) got no session ticket from the server; an untimed connection fetched one")
        }
        return [summarize("QUIC connect, full handshake", full),
                summarize("QUIC connect, resumed session", resumed),
                summarize("first response byte, full handshake", fullRequest),
                summarize("first response byte, 0-RTT request", early)]
    }
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let s = values.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func summarize(_ name: String, _ nanos: [UInt64]) -> TransportBenchmark.Latency {
    let s = nanos.sorted()
    func pct(_ p: Double) -> Double {
        guard !s.isEmpty else { return 0 }
        return Double(s[min(s.count - 1, Int((Double(s.count) * p).rounded(.up)) - 1)]) / 1000
    }
    return .init(name: name, samples: s.count, p50Microseconds: pct(0.50), p99Microseconds: pct(0.99),
                 minMicroseconds: Double(s.first ?? 0) / 1000)
}

private func fmt(_ v: Double) -> String { String(format: "%.1f", v) }
