import Foundation
import Logging

/// A running peer: accepts authenticated connections (QUIC or TLS over TCP,
/// whichever transport it was given) and serves each
/// stream they open by its first frame: SUBSCRIBE makes it a region stream
/// (served from `exports`), ECHO a diagnostic echo, HELLO a control stream.
/// A first frame that came as 0-RTT early data (replayable) is served only
/// if it is HELLO.
public final class PeerService: Sendable {
    public let endpoint: any Transport
    public let startedAt: Date
    private let started: ContinuousClock.Instant
    private let logger: Logger
    private let echo: DiagnosticEcho
    public let exports: RegionExports
    public let mirrors: [MirrorRunner]

    public init(endpoint: any Transport, exports: RegionExports? = nil, mirrors: [MirrorRunner] = [], logger: Logger) {
        self.mirrors = mirrors
        self.endpoint = endpoint
        self.logger = logger
        self.exports = exports ?? RegionExports([], logger: logger)
        echo = DiagnosticEcho(logger: logger)
        startedAt = Date()
        started = .now
    }

    /// Serves until the endpoint is closed and every connection has ended.
    public func run() async {
        let identity = endpoint.localIdentity
        logger.notice("listening on \(endpoint.localAddress) as \(identity.commonName ?? identity.subject) (sha256 \(identity.fingerprint))")
        await withDiscardingTaskGroup { group in
            for mirror in mirrors {
                group.addTask { await mirror.run() }
            }
            while let connection = await endpoint.accept() {
                group.addTask { await self.serve(connection) }
            }
            // The endpoint is closed: stop the mirrors' reconnect loops.
            group.cancelAll()
        }
    }

    private func serve(_ connection: any TransportConnection) async {
        let peer = "\(connection.remoteAddress)"
        await withDiscardingTaskGroup { group in
            do {
                while true {
                    let stream = try await connection.acceptStream()
                    group.addTask { await self.route(stream, connection: connection, peer: peer) }
                }
            } catch {
                logger.info("peer disconnected: \(error)", metadata: ["peer": "\(peer)", "identity": "\(connection.peerIdentity)"])
            }
        }
    }

    private func route(_ stream: any TransportStream, connection: any TransportConnection, peer: String) async {
        let frames = FrameStream(stream)
        do {
            let first = try await frames.receive()
            if let frame = first, stream.receivedEarlyData, !frame.mayArriveAsEarlyData {
                // Replayable bytes may only ask for what is safe to repeat.
                throw ProtocolViolation(.unexpectedFrame, "\(frame.name) may not be sent as 0-RTT early data; only HELLO may")
            }
            switch first {
            case .subscribe(let subscription)?:
                await exports.serve(frames, subscription: subscription, peer: connection.peerIdentity)
            case .hello(let hello)?:
                try await answerHello(hello, on: frames)
            case .echo(let bytes)?:
                try await echo.serve(frames, first: bytes, peer: peer)
            case let other?:
                throw ProtocolViolation(.unexpectedFrame, "a stream starts with SUBSCRIBE or ECHO, not \(other)")
            case nil:
                return
            }
        } catch let violation as ProtocolViolation {
            logger.warning("stream refused: \(violation)", metadata: ["peer": "\(peer)", "stream": "\(stream.id)"])
            await frames.fail(violation)
        } catch {
            logger.debug("stream ended early: \(error)", metadata: ["peer": "\(peer)", "stream": "\(stream.id)"])
        }
    }

    /// Control stream: our HELLO, then the catalog of what we export.
    private func answerHello(_ hello: Frame.Hello, on frames: FrameStream) async throws {
        guard hello.protocolVersion == Frame.protocolVersion else {
            throw ProtocolViolation(.unsupportedVersion, "this peer speaks protocol \(Frame.protocolVersion), not \(hello.protocolVersion)")
        }
        let me = endpoint.localIdentity
        try await frames.send(.hello(.init(peerName: me.commonName ?? me.subject)))
        try await frames.send(.catalog(exports.catalog()))
        try await frames.stream.finish()
    }

    public func statusReport() async -> StatusReport {
        let summaries = await endpoint.connectionSummaries()
        return StatusReport(
            version: memReplicaVersion,
            listenAddress: endpoint.localAddress.description,
            identity: StatusReport.Identity(endpoint.localIdentity),
            startedAt: startedAt,
            uptimeSeconds: started.duration(to: .now).seconds,
            peers: summaries.map(StatusReport.Peer.init).sorted { $0.remoteAddress < $1.remoteAddress },
            regions: regionStatus())
    }

    private func regionStatus() -> [StatusReport.Region] {
        let states = exports.mirrorStates()
        let primaries = exports.catalog().compactMap { entry -> StatusReport.Region? in
            guard let r = exports.export(named: entry.name)?.region else { return nil }
            var region = StatusReport.Region(name: r.name, role: "primary", path: r.backing.description, size: r.geometry.size,
                                             chunkSize: r.geometry.chunkSize, chunks: r.geometry.chunkCount)
            region.mirrors = states.filter { $0.region == r.name }.map {
                .init(peer: $0.peer, sentVersion: $0.sentVersion, acknowledgedVersion: $0.acknowledgedVersion,
                      versionLag: $0.versionLag, synced: $0.synced)
            }
            return region
        }
        let replicas = mirrors.map { runner -> StatusReport.Region in
            switch runner.mirror {
            case nil:
                return .init(name: runner.spec.name, role: "replica", path: runner.spec.path, size: 0, chunkSize: 0,
                             chunks: 0, chunksPresent: 0, source: runner.spec.address.description)
            case .eager(let m)?:
                let p = m.currentProgress
                return .init(name: runner.spec.name, role: "replica", path: runner.spec.path, size: m.region.geometry.size,
                             chunkSize: m.region.geometry.chunkSize, chunks: m.region.geometry.chunkCount,
                             chunksPresent: p.synced ? m.region.geometry.chunkCount : p.chunksPresent,
                             lastAppliedVersion: p.lastAppliedVersion,
                             source: runner.spec.address.description)
            case .lazy(let m)?:
                let p = m.progress
                var region = StatusReport.Region(name: runner.spec.name, role: "replica", path: runner.spec.path,
                                                 size: m.region.geometry.size, chunkSize: m.region.geometry.chunkSize,
                                                 chunks: p.chunkCount, chunksPresent: p.chunksPresent,
                                                 lastAppliedVersion: p.lastEpoch, source: runner.spec.address.description)
                region.lazy = .init(faults: p.faults, faultsServed: p.faultsServed, chunksInvalidated: p.chunksInvalidated,
                                    oldestFaultWaitingSeconds: p.oldestFaultWaiting.map { ($0.duration(to: .now)).seconds })
                return region
            }
        }
        return primaries + replicas
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
