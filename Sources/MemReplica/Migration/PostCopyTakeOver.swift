import MemReplicaSystem
import MemReplicaTransportCore
import Logging

/// The new owner's side of a post-copy hand-over (docs/MIGRATION.md): the
/// region is ours from the commit on and writable at once through this
/// peer's mapping. A chunk it lacks faults in from the frozen source (the
/// lazy mirror's fault path, in owner mode), and a background pull fills
/// the rest. The source serves this peer alone until `fill` returns.
///
/// If the source is lost before every chunk is here, the chunks still
/// missing cannot be read: an attached reader's session ends with a reason
/// once it has waited `PostCopyMirror.Options.faultWaitLimit`, and status
/// names the region's problem. Nothing missing is ever read as zeros.
final class PostCopyTakeOver: Sendable {
    let name: String
    let mirror: PostCopyMirror
    /// Where the source listens, and its certificate.
    let source: PeerAddress
    let sourceFingerprint: String
    /// The identity the source still exports the frozen region under.
    let sourceIdentity: RegionIdentity
    private let endpoint: any Transport
    private let logger: Logger
    private let state = Locked(State())

    private struct State {
        var problem: String?
        var connections = 0
        var began = ContinuousClock.now
        var finished: ContinuousClock.Instant?
    }

    init(name: String, mirror: PostCopyMirror, source: PeerAddress, sourceFingerprint: String, sourceIdentity: RegionIdentity,
         endpoint: any Transport, logger: Logger) {
        self.name = name
        self.mirror = mirror
        self.source = source
        self.sourceFingerprint = sourceFingerprint
        self.sourceIdentity = sourceIdentity
        self.endpoint = endpoint
        self.logger = logger
    }

    /// Why the fill is stalled now, if it is.
    var problem: String? { state.withLock { $0.problem } }
    var complete: Bool { state.withLock { $0.finished != nil } }
    /// From the commit until every chunk was here (nil while filling).
    var fillDuration: Duration? { state.withLock { s in s.finished.map { s.began.duration(to: $0) } } }

    /// Pulls until every chunk is here, reconnecting to the source with
    /// backoff while it is out of reach. `first` is a connection opened
    /// ahead, while the source was still deciding. Returns when complete,
    /// or when cancelled.
    func fill(first: (any TransportConnection)?) async {
        var next = first
        var backoff = Duration.milliseconds(100)
        while !mirror.progress.complete, !Task.isCancelled {
            let connection: any TransportConnection
            if let opened = next {
                connection = opened
                next = nil
            } else {
                do {
                    connection = try await endpoint.connect(to: source)
                } catch {
                    note("the source \(source) is out of reach (\(error)); \(missing) chunks are missing here")
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(5))
                    continue
                }
            }
            guard connection.peerIdentity.fingerprint == sourceFingerprint else {
                note("\(source) is \(connection.peerIdentity) now, not the source of the hand-over")
                await connection.close(errorCode: 0, reason: "not the source of the hand-over")
                try? await Task.sleep(for: .seconds(5))
                continue
            }
            state.withLock { $0.connections += 1 }
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { [mirror, sourceIdentity] in
                        try await mirror.run(over: connection, identity: sourceIdentity)
                    }
                    group.addTask { [mirror] in
                        // Complete: closing the connection ends the run's streams.
                        while !mirror.progress.complete { try await Task.sleep(for: .milliseconds(2)) }
                        await connection.close(errorCode: 0, reason: "post-copy fill complete")
                    }
                    defer { group.cancelAll() }
                    try await group.next()
                }
            } catch where !mirror.progress.complete {
                note("pulling from the source \(source) stopped (\(error)); \(missing) chunks are missing here")
                await connection.close(errorCode: 0, reason: "post-copy fill interrupted")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
                continue
            } catch {}
            backoff = .milliseconds(100)
        }
        guard mirror.progress.complete else { return }
        let took = state.withLock { s -> Duration in
            s.finished = .now
            s.problem = nil
            return s.began.duration(to: s.finished!)
        }
        logger.notice("'\(name)': every chunk is here after the post-copy hand-over", metadata: [
            "fill": "\(took)", "faults": "\(mirror.progress.faults)", "connections": "\(state.withLock { $0.connections })"])
    }

    private var missing: Int {
        let p = mirror.progress
        return p.chunkCount - p.chunksPresent
    }

    private func note(_ problem: String) {
        let first = state.withLock { s -> Bool in
            defer { s.problem = problem }
            return s.problem == nil
        }
        if first { logger.warning("'\(name)': \(problem)") }
    }
}
