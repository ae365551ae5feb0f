import MemReplica
import MemReplicaBench
import MemReplicaQUIC
import MemReplicaTransportCore
import ArgumentParser
import Foundation

struct PingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping",
        abstract: "Connect to a peer with mutual TLS and time echoed round trips.",
        discussion: """
            Each round trip opens a fresh stream, sends SIZE bytes in an ECHO frame, and checks the peer's echo \
            byte for byte. Without --cert/--key/--ca the state folder's development CA is used, \
            so a peer started with the same state folder trusts this client.
            """)

    @Argument(help: ArgumentHelp("The peer: HOST:PORT or [IPv6]:PORT.", valueName: "host:port"))
    var address: String

    @Option(help: "Round trips to make.")
    var count = 5

    @Option(help: ArgumentHelp("Bytes sent (and echoed) per round trip.", valueName: "bytes"))
    var size = 1024

    @Option(help: ArgumentHelp("Pause between round trips.", valueName: "seconds"))
    var interval = 0.0

    @Option(help: ArgumentHelp("Give up on a round trip after this long.", valueName: "seconds"))
    var timeout = 10.0

    @Option(help: ArgumentHelp("The peer's transport: quic, tcp or tcp-per-region.", valueName: "kind"))
    var transport: TransportKind = .quic

    @OptionGroup var tls: TLSOptions

    @OptionGroup var state: StateOptions

    @Option(help: "Name in the development certificate (default: HOSTNAME-client). Unused with --cert.")
    var name: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if count < 1 { throw ValidationError("--count must be at least 1") }
        if size < 0 || size > DiagnosticEcho.limit {
            throw ValidationError("--size must be between 0 and \(DiagnosticEcho.limit) bytes (the peer's echo limit)")
        }
        if !(interval >= 0) { throw ValidationError("--interval must not be negative") }
        if !(timeout > 0) { throw ValidationError("--timeout must be positive") }
    }

    func run() async throws {
        let logger = logging.makeLogger(defaultLevel: .notice)
        let target = try PeerAddress(parsing: address)
        let stateDirectory = state.directory
        let tlsConfiguration = try tls.configuration(state: stateDirectory, peerName: name ?? PeerName.clientDefault,
                                                     logger: logger)
        // Dual-stack wildcard: reaches IPv4 and IPv6 targets alike.
        let endpoint = try transport.makeTransport(bind: PeerAddress(parsing: ":0"), tls: tlsConfiguration,
                                                   configuration: QUICConfiguration(), logger: logger)
        do {
            try await ping(target, over: endpoint)
        } catch {
            await endpoint.close()
            throw error
        }
        await endpoint.close()
    }

    private func ping(_ target: PeerAddress, over endpoint: any Transport) async throws {
        print("PING \(target): \(count) round trip\(count == 1 ? "" : "s") of \(size) bytes over \(transport), mutual TLS 1.3, ALPN \(QUICConfiguration.memReplicaALPN)")
        let start = ContinuousClock.now
        let connection = try await endpoint.connect(to: target)
        let handshake = await connection.statistics().handshakeDuration ?? start.duration(to: .now)
        let peer = connection.peerIdentity
        print("connected to \(peer.subject) (sha256 \(peer.fingerprint)), handshake \(Format.milliseconds(handshake.milliseconds))")

        var latencies: [Double] = []
        for seq in 1...count {
            let latency = try await roundTrip(seq, on: connection)
            latencies.append(latency.milliseconds)
            print("\(size) bytes echoed by \(target): seq=\(seq) time=\(Format.milliseconds(latency.milliseconds))")
            if interval > 0, seq < count { try await Task.sleep(for: .seconds(interval)) }
        }
        let stats = await connection.statistics()
        await connection.close(errorCode: 0, reason: "ping done")

        let sorted = latencies.sorted()
        let median = sorted[(sorted.count - 1) / 2]
        print("--- \(target) ping statistics ---")
        print("\(count) round trip\(count == 1 ? "" : "s"), every echo verified")
        print("latency min/p50/max = \(Format.milliseconds(sorted[0], unit: false))/\(Format.milliseconds(median, unit: false))/\(Format.milliseconds(sorted[sorted.count - 1]))")
        print("\(transport == .quic ? "QUIC" : "TCP") smoothed RTT \(Format.milliseconds(stats.smoothedRTT.milliseconds)) (min \(Format.milliseconds(stats.minRTT.milliseconds)), latest \(Format.milliseconds(stats.latestRTT.milliseconds)))")
    }

    /// One echo on a fresh stream, bounded by `timeout`. On timeout the
    /// connection is closed, which also ends the stalled read.
    private func roundTrip(_ seq: Int, on connection: any TransportConnection) async throws -> Duration {
        let payload = Self.payload(size: size, seed: UInt64(seq))
        let limit = Duration.seconds(timeout)
        return try await withThrowingTaskGroup(of: Duration?.self) { group in
            group.addTask {
                let start = ContinuousClock.now
                let frames = FrameStream(try await connection.openStream())
                try await frames.send(.echo(payload))
                try await frames.stream.finish()
                guard case .echo(let echo)? = try await frames.receive() else {
                    throw PingError.mismatch(seq: seq, sent: payload.count, received: 0, firstDifference: 0)
                }
                let elapsed = start.duration(to: .now)
                guard echo == payload else {
                    let at = zip(echo, payload).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                        ?? min(echo.count, payload.count)
                    throw PingError.mismatch(seq: seq, sent: payload.count, received: echo.count, firstDifference: at)
                }
                return elapsed
            }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            guard let first = try await group.next(), let elapsed = first else {
                await connection.close(errorCode: 0, reason: "ping timed out")
                throw PingError.timeout(seq: seq, seconds: timeout)
            }
            group.cancelAll()
            return elapsed
        }
    }

    /// Different bytes every round, so a stale or misrouted echo is caught.
    static func payload(size: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<size).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }
}
