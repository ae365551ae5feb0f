import MemReplicaSystem
import MemReplicaTransportCore
import Foundation
import Logging

/// The source's side of one migration (docs/MIGRATION.md).
///
/// Pre-copy: the destination's eager mirror of the region converges while
/// the writers run; once what is left to send fits the downtime budget the
/// writers are frozen, a last scan pass is sent, the frozen region is
/// hashed, and HANDOVER asks the destination to commit.
///
/// Post-copy: the writers are frozen at once; instead of data, DIRTY
/// frames name the chunks the destination's copy may hold stale (every
/// chunk changed since a point its mirror had acknowledged), and HANDOVER
/// follows. The destination owns the region from its commit and pulls what
/// it lacks from this frozen copy, which is served to it alone until it
/// says it holds every chunk. Hybrid: pre-copy rounds while the estimated
/// downtime keeps falling, post-copy once it stops.
final class SourceMigration: Sendable {
    let request: MigrationRequest
    let export: RegionExports.Export
    let address: PeerAddress
    let exports: RegionExports
    let endpoint: any Transport
    let identities: RegionIdentityStore?
    let freeze: MigrationFreeze?
    /// The PIDs of the processes attached to the region as writers now.
    let attachedWriters: @Sendable () -> [Int32]
    /// Progress for status, as it changes.
    let report: @Sendable (MigrationProgress) -> Void
    /// Told who the destination is, once connected.
    let connected: @Sendable (PeerIdentity) -> Void
    /// The region's dirty-rate series (`DirtyRateHistory`), for `--when quiet`.
    let dirtySeries: @Sendable () -> [Double]
    /// Called once the destination committed, before a deferred check: the
    /// source stops acting as the region's primary (after post-copy, the
    /// second argument, it serves the new owner's pulls until the fill ends).
    let onHandedOver: @Sendable (RegionIdentity, Bool) async -> Void
    let logger: Logger

    let started = ContinuousClock.now
    private let startedAt = Date()
    let deadline: ContinuousClock.Instant
    let key = ChunkHashKey.random()
    let counts: Locked<Counts>

    /// What the destination's subscription pushed since the migration began.
    struct Counts {
        var bytes: UInt64 = 0
        var resent: UInt64 = 0
        var sent: [Bool]
    }

    init(request: MigrationRequest, export: RegionExports.Export, address: PeerAddress, exports: RegionExports,
         endpoint: any Transport, identities: RegionIdentityStore?, freeze: MigrationFreeze?,
         attachedWriters: @escaping @Sendable () -> [Int32], report: @escaping @Sendable (MigrationProgress) -> Void,
         connected: @escaping @Sendable (PeerIdentity) -> Void, dirtySeries: @escaping @Sendable () -> [Double],
         onHandedOver: @escaping @Sendable (RegionIdentity, Bool) async -> Void, logger: Logger) {
        self.onHandedOver = onHandedOver
        self.request = request
        self.export = export
        self.address = address
        self.exports = exports
        self.endpoint = endpoint
        self.identities = identities
        self.freeze = freeze
        self.attachedWriters = attachedWriters
        self.report = report
        self.connected = connected
        self.dirtySeries = dirtySeries
        self.logger = logger
        deadline = started + .milliseconds(Int64(request.timeoutSeconds * 1000))
        counts = Locked(Counts(sent: [Bool](repeating: false, count: export.region.geometry.chunkCount)))
    }

    var region: Region { export.region }
    var name: String { region.name }
    var chunkSize: Int { region.geometry.chunkSize }

    /// What `run` found; the caller acts on a hand-over (relinquish, mirror back).
    struct Result {
        var report: MigrationReport
        /// The destination committed; the source must stop acting as primary.
        var handedOver: Bool
        /// Neither side's answer is known: stay fenced.
        var uncertain: Bool
        /// Writers stopped at the freeze (still stopped when handed over).
        var stoppedProcesses: [Int32]
        var destinationIdentity: PeerIdentity?
        /// Handed over by post-copy: the destination pulls from this peer.
        var postcopy = false
        /// After post-copy: the destination said it holds every chunk.
        var filled = false
    }

    /// Why the migration gives up; the source keeps the region.
    struct Abort: Error {
        let reason: String
    }

    private let phaseDetail = Locked(MigrationProgress.initial)

    func progress(_ update: (inout MigrationProgress) -> Void) {
        let now = phaseDetail.withLock { p -> MigrationProgress in
            update(&p)
            return p
        }
        report(now)
    }

    func run() async -> Result {
        var result = Result(report: emptyReport(), handedOver: false, uncertain: false, stoppedProcesses: [])
        var connection: (any TransportConnection)?
        var stream: MigrationStream?
        var frozen: Frozen?
        var cutFor: String?
        do {
            progress { $0.phase = "connecting" }
            let opened = try await endpoint.connect(to: address)
            connection = opened
            result.destinationIdentity = opened.peerIdentity
            connected(opened.peerIdentity)
            guard export.allow.permits(opened.peerIdentity) else {
                throw Abort(reason: "\(address) is \(opened.peerIdentity), which the region's allow list (\(export.allow)) "
                            + "leaves out: it cannot be mirroring '\(name)'")
            }
            let destination = opened.peerIdentity.commonName ?? opened.peerIdentity.subject
            exports.tapSends(of: name) { [counts] peer, chunk, bytes in
                guard peer == destination else { return }
                counts.withLock { c in
                    c.bytes += UInt64(bytes)
                    if c.sent[chunk] { c.resent += 1 } else { c.sent[chunk] = true }
                }
            }
            let s = MigrationStream(frames: FrameStream(try await opened.openStream()))
            // Its few frames go ahead of the region stream's queued WRITEs:
            // HANDOVER is sent while the writers are frozen.
            await s.frames.stream.prioritize()
            stream = s
            try await s.send(.migrate(.init(name: name, size: UInt64(region.geometry.size),
                                            chunkSize: UInt64(region.geometry.chunkSize), identity: export.identity,
                                            mode: request.mode, hashKey: key.bytes,
                                            sourcePort: UInt64(endpoint.localAddress.port))))
            progress { $0.phase = "waiting for the destination's mirror to sync" }
            guard case .migrateReady(_, _, let holdsCopy) = try await s.receive(before: deadline) else {
                throw ProtocolViolation(.unexpectedFrame, "the destination answers MIGRATE with MIGRATE_READY")
            }
            guard holdsCopy || request.mode == .postcopy else {
                throw Abort(reason: "the destination holds no copy of '\(name)'; only post-copy can start from none")
            }
            let quietEnds = request.when == .quiet ? try await waitForQuiet(result: &result) : nil
            let ready = ContinuousClock.now
            result.report.readySeconds = started.duration(to: ready).seconds - (result.report.waitedSeconds ?? 0)
            var postcopy = request.mode == .postcopy
            if !postcopy {
                let estimate = try await converge(over: opened, destination: destination, mayGiveUp: request.mode == .hybrid,
                                                  result: &result)
                if let estimate { result.report.estimatedDowntimeMilliseconds = estimate * 1000 } else { postcopy = true }
            }
            if postcopy, holdsCopy, let quietEnds {
                // The quiet phase begins right after a burst: let the
                // mirror catch up on it (fewer chunks to name and pull),
                // but freeze before the next burst.
                try await catchUp(destination: destination, before: quietEnds - DirtyRateHistory.binDuration * 2)
            }
            result.report.roundsSeconds = ready.duration(to: .now).seconds
            frozen = try await freezeWriters()
            result.stoppedProcesses = frozen!.processes
            result.report.frozenProcesses = frozen!.processes
            let next = RegionIdentity(id: export.identity.id, generation: export.identity.generation + 1)
            let handover: Frame
            if postcopy {
                progress { $0.phase = "naming the chunks the destination lacks" }
                var stale: [Int]?
                var acknowledged: UInt64 = 0
                if holdsCopy {
                    cutFor = destination
                    let cut = try await cutSubscription(of: destination)
                    stale = cut.stale
                    acknowledged = cut.acknowledgedVersion
                }
                for start in stride(from: 0, to: stale?.count ?? 0, by: FrameLimits.maxDirtyChunks) {
                    let part = stale![start..<min(start + FrameLimits.maxDirtyChunks, stale!.count)]
                    try await s.send(.dirty(epoch: next.generation, chunks: part.map { UInt64($0) }))
                }
                result.report.chunksPulled = stale?.count ?? region.geometry.chunkCount
                result.report.finalFlushMilliseconds = frozen!.complete.duration(to: .now).seconds * 1000
                handover = .handover(generation: next.generation, finalVersion: acknowledged, postcopy: true, digest: [])
            } else {
                let (finalVersion, digest) = try await flush(destination: destination, frozen: frozen!, result: &result)
                handover = .handover(generation: next.generation, finalVersion: finalVersion, digest: digest)
            }
            progress { $0.phase = "handing over" }
            do {
                try identities?.beginHandOver(region: name, path: region.backing.description, from: export.identity,
                                              to: request.destination, then: request.then)
            } catch {
                throw Abort(reason: "cannot record the hand-over in the state folder: \(error)")
            }
            let answer: Frame
            do {
                try await s.send(handover)
                answer = try await s.receive(before: max(deadline, .now + .seconds(10)))
            } catch ReplicationError.refusedByPeer(let code, let message) {
                // The destination refused: it did not commit.
                try? identities?.abandonHandOver(region: name, path: region.backing.description)
                throw Abort(reason: "the destination refused the hand-over (\(ProtocolErrorCode(rawValue: code).map { "\($0)" } ?? "code \(code)")): \(message)")
            } catch {
                // Sent, or maybe sent: only the destination knows.
                let committed = await askWhetherCommitted(next)
                guard let committed else {
                    result.uncertain = true
                    throw Abort(reason: "the connection to the destination broke during the hand-over (\(error)) and it "
                                + "could not be asked again within \(request.timeoutSeconds) s: the region stays fenced "
                                + "(read-only here) until an operator resolves it")
                }
                guard committed else {
                    try? identities?.abandonHandOver(region: name, path: region.backing.description)
                    throw Abort(reason: "the connection to the destination broke during the hand-over (\(error)); "
                                + "it had not committed")
                }
                answer = .handedOver(generation: next.generation)
            }
            guard case .handedOver(let generation) = answer, generation == next.generation else {
                throw Abort(reason: "the destination answered HANDOVER with \(answer.name), not HANDED_OVER at \(next.generation)")
            }
            try? identities?.finishHandOver(region: name, path: region.backing.description)
            let done = ContinuousClock.now
            result.handedOver = true
            result.report.outcome = "handed over"
            result.report.generation = generation
            result.report.downtimeMilliseconds = frozen!.began.duration(to: done).seconds * 1000
            result.report.handedOverAs = postcopy ? .postcopy : .precopy
            result.postcopy = postcopy
            await onHandedOver(next, postcopy)
            if postcopy {
                progress { $0.phase = "post-copy: the destination pulls what it lacks" }
                result.filled = await waitForFill(on: s, generation: next.generation)
                if result.filled { result.report.fillSeconds = done.duration(to: .now).seconds }
            } else if request.verify == .after {
                progress { $0.phase = "checking the hand-over" }
                result.report.verified = await checkAfterCommit(on: s)
            } else {
                result.report.verified = true
            }
            progress { $0.phase = "handed over" }
            await connection?.close(errorCode: 0, reason: "migration done")
        } catch {
            let reason: String = switch error {
            case let abort as Abort: abort.reason
            case is MigrationStream.DeadlinePassed:
                "no answer from the destination within --timeout (\(request.timeoutSeconds) s)"
            case ReplicationError.refusedByPeer(let code, let message):
                "the destination refused (\(ProtocolErrorCode(rawValue: code).map { "\($0)" } ?? "code \(code)")): \(message)"
            default: "\(error)"
            }
            result.report.reason = reason
            result.report.outcome = result.uncertain ? "uncertain" : "aborted"
            if !result.uncertain, let frozen { await thaw(frozen) }
            progress { $0.phase = result.uncertain ? "fenced: hand-over unconfirmed" : "aborted" }
            logger.warning("migration of '\(name)' to \(request.destination) \(result.report.outcome): \(reason)")
            await stream?.abort(reason)
            await connection?.close(errorCode: ProtocolErrorCode.migrationAborted.rawValue, reason: "migration aborted")
        }
        // Handed over: the destination stopped that mirror. Otherwise it
        // resubscribes (and resumes) to follow the region again.
        if let cutFor { exports.endCut(of: name, for: cutFor, release: !result.handedOver) }
        exports.tapSends(of: name, nil)
        let c = counts.withLock { $0 }
        result.report.bytesSent = c.bytes
        result.report.chunksResent = c.resent
        result.report.totalSeconds = started.duration(to: .now).seconds - (result.report.waitedSeconds ?? 0)
        return result
    }

    private func emptyReport() -> MigrationReport {
        MigrationReport(region: name, destination: request.destination, mode: request.mode, outcome: "aborted",
                        totalSeconds: 0, bytesSent: 0, regionBytes: UInt64(region.geometry.size), rounds: 0,
                        chunksResent: 0, generation: export.identity.generation, frozenProcesses: [], startedAt: startedAt,
                        verify: request.verify.rawValue)
    }

    /// `--verify after`: the region is still frozen here; its digest goes
    /// to the destination, which compares it with its copy as committed.
    /// Nil when no answer came.
    private func checkAfterCommit(on stream: MigrationStream) async -> Bool? {
        let start = ContinuousClock.now
        let digest = await FrozenRegionDigest.compute(region, key: key)
        do {
            try await stream.send(.handoverCheck(digest: digest))
            let answer = try await stream.receive(before: .now + .seconds(max(10, request.timeoutSeconds)))
            guard case .handedOver = answer else { return nil }
            logger.info("hand-over of '\(name)' checked: the copies are equal", metadata: [
                "after": "\(start.duration(to: .now))"])
            return true
        } catch ReplicationError.refusedByPeer(let code, let message) where code == ProtocolErrorCode.handoverMismatch.rawValue {
            logger.error("hand-over of '\(name)' to \(request.destination): \(message); this peer keeps its frozen copy")
            return false
        } catch {
            logger.warning("hand-over of '\(name)' to \(request.destination) not checked: \(error)")
            return nil
        }
    }

    /// Writers stopped: when the freeze began and which processes.
    private struct Frozen {
        var began: ContinuousClock.Instant
        /// Every writer has stopped from here on.
        var complete: ContinuousClock.Instant
        var processes: [Int32]
    }

    private func freezeWriters() async throws -> Frozen {
        progress { $0.phase = "freezing writers" }
        let began = ContinuousClock.now
        if let freeze {
            // Unstructured: a pause that never returns must not hold the migration.
            let paused = Locked(false)
            Task {
                await freeze.pause()
                paused.withLock { $0 = true }
            }
            let limit = ContinuousClock.now + MigrationFreeze.pauseLimit
            while !paused.withLock({ $0 }), ContinuousClock.now < limit {
                try? await Task.sleep(for: .microseconds(200))
            }
            guard paused.withLock({ $0 }) else {
                await freeze.resume(false)
                throw Abort(reason: "the in-process writers did not pause within \(MigrationFreeze.pauseLimit)")
            }
        }
        let processes: [Int32]
        do {
            processes = try ProcessFreezer.stop(attachedWriters())
        } catch {
            await freeze?.resume(false)
            throw Abort(reason: error.description)
        }
        return Frozen(began: began, complete: .now, processes: processes)
    }

    private func thaw(_ frozen: Frozen) async {
        ProcessFreezer.resume(frozen.processes)
        await freeze?.resume(false)
    }

    /// The final flush: a scan pass that began after every writer stopped,
    /// sent (not waited for: HANDOVER follows right behind it, and the
    /// destination waits until its mirror applied `final_version`, which
    /// saves a round trip of downtime); meanwhile the frozen region is
    /// hashed. Returns the final version and the digest.
    private func flush(destination: String, frozen: Frozen, result: inout Result) async throws -> (UInt64, [UInt8]) {
        progress { $0.phase = "final flush" }
        let region = self.region, key = self.key, deferred = request.verify == .after
        let hashing = Task { () -> (digest: [UInt8], seconds: Double) in
            guard !deferred else { return ([], 0) }
            let start = ContinuousClock.now
            let digest = await FrozenRegionDigest.compute(region, key: key)
            return (digest, start.duration(to: .now).seconds)
        }
        defer { hashing.cancel() }
        var target: UInt64?
        var asked: UInt64?
        while true {
            guard let state = subscription(of: destination) else {
                throw Abort(reason: "the destination's mirror went away during the final flush")
            }
            if let began = state.lastPassBegan, began > frozen.complete {
                target = state.sentVersion
                break
            }
            if asked != state.passes {
                asked = state.passes
                exports.requestPass(of: name)
            }
            guard ContinuousClock.now < deadline else {
                throw Abort(reason: "the final flush was not sent within --timeout (\(request.timeoutSeconds) s)")
            }
            try await Task.sleep(for: .microseconds(500))
        }
        let flushed = ContinuousClock.now
        let (digest, seconds) = await hashing.value
        result.report.finalFlushMilliseconds = frozen.complete.duration(to: flushed).seconds * 1000
        result.report.digestMilliseconds = deferred ? nil : seconds * 1000
        return (target!, digest)
    }

    /// After a broken hand-over: asks the destination, until the timeout,
    /// whether it committed `next`. Nil when it could not be asked.
    private func askWhetherCommitted(_ next: RegionIdentity) async -> Bool? {
        let until = ContinuousClock.now + .milliseconds(Int64(request.timeoutSeconds * 1000))
        while ContinuousClock.now < until {
            do {
                let connection = try await endpoint.connect(to: address)
                defer { Task { await connection.close(errorCode: 0, reason: "migration query") } }
                let s = MigrationStream(frames: FrameStream(try await connection.openStream()))
                try await s.send(.migrate(.init(name: name, size: UInt64(region.geometry.size),
                                                chunkSize: UInt64(region.geometry.chunkSize), identity: export.identity,
                                                mode: request.mode, hashKey: key.bytes, committing: next.generation)))
                do {
                    if case .handedOver(let g) = try await s.receive(before: .now + .seconds(10)), g == next.generation {
                        return true
                    }
                    return false
                } catch ReplicationError.refusedByPeer {
                    return false
                }
            } catch {
                logger.info("asking \(address) whether it committed '\(name)': \(error); trying again")
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        return nil
    }
}
