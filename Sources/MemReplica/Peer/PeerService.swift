import Foundation
import Logging

/// A running peer: accepts authenticated QUIC connections and serves each
/// stream they open. Today every stream gets the diagnostic echo; the
/// replication protocol replaces that in a later issue.
public final class PeerService: Sendable {
    public let endpoint: QUICEndpoint
    public let startedAt: Date
    private let started: ContinuousClock.Instant
    private let logger: Logger
    private let echo: DiagnosticEcho

    public init(endpoint: QUICEndpoint, logger: Logger) {
        self.endpoint = endpoint
        self.logger = logger
        echo = DiagnosticEcho(logger: logger)
        startedAt = Date()
        started = .now
    }

    /// Serves until the endpoint is closed and every connection has ended.
    public func run() async {
        let identity = endpoint.localIdentity
        logger.notice("listening on \(endpoint.localAddress) as \(identity.commonName ?? identity.subject) (sha256 \(identity.fingerprint))")
        await withDiscardingTaskGroup { group in
            while let connection = await endpoint.acceptQUIC() {
                group.addTask { await self.serve(connection) }
            }
        }
    }

    private func serve(_ connection: QUICConnection) async {
        let peer = "\(connection.remoteAddress)"
        await withDiscardingTaskGroup { group in
            do {
                while true {
                    let stream = try await connection.acceptStream()
                    group.addTask { await self.echo.serve(stream, peer: peer) }
                }
            } catch {
                logger.info("peer disconnected: \(error)", metadata: ["peer": "\(peer)", "identity": "\(connection.peerIdentity)"])
            }
        }
    }

    public func statusReport() async -> StatusReport {
        let summaries = await endpoint.connectionSummaries()
        return StatusReport(
            version: memReplicaVersion,
            listenAddress: endpoint.localAddress.description,
            identity: StatusReport.Identity(endpoint.localIdentity),
            startedAt: startedAt,
            uptimeSeconds: started.duration(to: .now).seconds,
            peers: summaries.map(StatusReport.Peer.init).sorted { $0.remoteAddress < $1.remoteAddress })
    }

    /// Answers a control-socket request.
    public func handle(_ request: ControlRequest) async -> ControlResponse {
        switch request.command {
        case ControlRequest.status.command:
            return .status(await statusReport())
        default:
            return .error("unknown command '\(request.command)' (this peer knows: status)")
        }
    }
}
