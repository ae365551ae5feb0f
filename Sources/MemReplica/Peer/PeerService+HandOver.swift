import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// The destination's side of a migration: a MIGRATE stream from the peer
/// this one mirrors the region from (docs/MIGRATION.md).
extension PeerService {
    /// How long a destination waits for its mirror to sync before it
    /// answers MIGRATE_READY (the source's own timeout usually ends it first).
    public static let migrationSyncLimit: Duration = .seconds(600)
    /// How long a destination waits, after HANDOVER, for its mirror to
    /// apply the final WRITEs (they travel on another stream).
    public static let finalWritesLimit: Duration = .seconds(30)

    func takeOver(_ m: Frame.Migrate, on frames: FrameStream, from connection: any TransportConnection) async throws {
        if m.committing != 0 {
            try await answerCommitQuery(m, on: frames)
            return
        }
        guard let key = ChunkHashKey(bytes: m.hashKey) else {
            throw ProtocolViolation(.malformedFrame, "MIGRATE carries a \(ChunkHashKey.byteCount)-byte hash key")
        }
        if let taken = takeOvers.withLock({ $0[m.name] }), !taken.complete {
            throw ProtocolViolation(.migrationRefused, "'\(m.name)' is still being filled after a post-copy hand-over")
        }
        var started: MirrorRunner?
        let runner: MirrorRunner?
        if let existing = mirrors.first(where: { $0.spec.name == m.name }) {
            runner = existing
        } else if m.mode == .postcopy {
            // Nothing held: every chunk is pulled after the commit.
            runner = nil
            _ = try takeOverPath(for: m)
        } else {
            runner = try startMirror(for: m, from: connection)
            started = runner
        }
        if m.mode != .precopy { try checkPostCopyPossible(m, runner: runner) }
        // Frames from the source, read from here on by one task: the wait
        // for the mirror below must notice a source that gave up.
        let (incoming, feed) = AsyncStream<Result<Frame?, any Error>>.makeStream()
        let sourceLeft = Locked(false)
        let reader = Task {
            do {
                while let frame = try await frames.receive() { feed.yield(.success(frame)) }
                feed.yield(.success(nil))
            } catch {
                feed.yield(.failure(error))
            }
            sourceLeft.withLock { $0 = true }
            feed.finish()
        }
        defer { reader.cancel() }
        do {
            try await commit(m, key: key, runner: runner, from: connection, frames: frames,
                             incoming: incoming, sourceLeft: sourceLeft)
        } catch {
            if let started {
                // A mirror started for this migration ends with it.
                _ = started.stopForHandOver()
                removeMirror(started)
                await started.closeAfterHandOver()
            }
            throw error
        }
    }

    /// `--accept-migrations`: a mirror of the region from the source, into
    /// DIR/NAME.region, started for this migration.
    private func startMirror(for m: Frame.Migrate, from connection: any TransportConnection) throws -> MirrorRunner {
        guard let folder = acceptMigrationsInto else {
            throw ProtocolViolation(.migrationRefused, "this peer does not mirror '\(m.name)' and accepts no migrations of "
                                    + "regions it does not mirror (peer --accept-migrations DIR)")
        }
        guard m.sourcePort != 0 else {
            throw ProtocolViolation(.migrationRefused, "a migration to a peer that does not mirror the region needs the "
                                    + "source's port")
        }
        let spec: MirrorSpec
        do {
            let path = try takeOverPath(for: m, in: folder)
            let address = try PeerAddress(host: connection.remoteAddress.host, port: UInt16(m.sourcePort))
            spec = try MirrorSpec(name: m.name, address: address, path: path,
                                  expectedPrimary: .fingerprint(connection.peerIdentity.fingerprint))
        } catch {
            throw ProtocolViolation(.migrationRefused, "cannot mirror '\(m.name)' from the source: \(error)")
        }
        let runner = MirrorRunner(spec: spec, endpoint: endpoint, statistics: statistics, logger: logger)
        startMirror(runner)
        logger.notice("mirroring '\(m.name)' from \(spec.address) into \(spec.path): it is being migrated to this peer")
        return runner
    }

    /// The copy of `name` taken over by post-copy while it fills: this
    /// peer's mapping of it is writable now (a store to a chunk not here
    /// yet faults it in from the old owner first). Nil once every chunk is
    /// here: it is exported then (`exports.export(named:)`).
    public func postCopyTakeOver(named name: String) -> PostCopyMirror? {
        takeOvers.withLock { $0[name] }.flatMap { $0.complete ? nil : $0.mirror }
    }

    /// Where a region taken over without a mirror of it is kept:
    /// DIR/NAME.region under `--accept-migrations DIR`.
    private func takeOverPath(for m: Frame.Migrate, in folder: String? = nil) throws -> String {
        guard let folder = folder ?? acceptMigrationsInto else {
            throw ProtocolViolation(.migrationRefused, "this peer does not mirror '\(m.name)' and accepts no migrations of "
                                    + "regions it does not mirror (peer --accept-migrations DIR)")
        }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        return folder + "/" + AtomicFile.safeName(m.name) + ".region"
    }

    /// Post-copy faults need a file userfaultfd can watch for missing
    /// pages (tmpfs, e.g. /dev/shm) and an eager mirror (or none):
    /// refused before anything is frozen.
    private func checkPostCopyPossible(_ m: Frame.Migrate, runner: MirrorRunner?) throws {
        if let runner, runner.spec.lazy {
            throw ProtocolViolation(.migrationRefused, "'\(m.name)' is a lazy mirror here; \(m.mode.rawValue) needs an eager "
                                    + "one (or none, with peer --accept-migrations)")
        }
        let path = try runner?.spec.path ?? takeOverPath(for: m)
        let folder = (path as NSString).deletingLastPathComponent
        guard Region.isSharedMemory(folder: folder.isEmpty ? "." : folder) else {
            throw ProtocolViolation(.migrationRefused, "\(m.mode.rawValue) needs the copy of '\(m.name)' on tmpfs (e.g. /dev/shm): "
                                    + "userfaultfd cannot watch \(path) for missing pages")
        }
    }

    private func commit(_ m: Frame.Migrate, key: ChunkHashKey, runner: MirrorRunner?, from connection: any TransportConnection,
                        frames: FrameStream, incoming: AsyncStream<Result<Frame?, any Error>>,
                        sourceLeft: Locked<Bool>) async throws {
        let source = connection.peerIdentity
        if let runner, runner.spec.lazy {
            throw ProtocolViolation(.migrationRefused, "'\(m.name)' is a lazy mirror here; \(m.mode.rawValue) needs an eager one")
        }
        var mirror: RegionMirror?
        if let runner { mirror = try await syncedMirror(runner, for: m, from: source, sourceLeft: sourceLeft) }
        // Hashed now, kept current as WRITEs arrive: at HANDOVER our side
        // of the check is ready while the source's writers are frozen.
        let hashes = m.mode == .postcopy ? nil : await mirror?.startHandOverHashes(key: key)
        // Post-copy pulls over a connection of its own, opened while the
        // source is still deciding: the first fault after the commit does
        // not wait for a handshake.
        let pullFrom = try runner?.spec.address ?? PeerAddress(host: connection.remoteAddress.host, port: UInt16(m.sourcePort))
        let early = m.mode == .precopy ? nil : Task { [endpoint] in try? await endpoint.connect(to: pullFrom) }
        var handedEarly = false
        await frames.stream.prioritize()
        defer {
            if let early, !handedEarly { Task { await early.value?.close(errorCode: 0, reason: "migration ended") } }
        }
        try await frames.send(.migrateReady(generation: m.identity.generation,
                                            appliedVersion: mirror?.currentProgress.lastAppliedVersion ?? 0,
                                            holdsCopy: mirror != nil))
        var fromSource = incoming.makeAsyncIterator()
        var stale: [Int] = []
        let chunkCount = UInt64(m.size / max(1, m.chunkSize) + (m.size % max(1, m.chunkSize) == 0 ? 0 : 1))
        var handover: (generation: UInt64, finalVersion: UInt64, postcopy: Bool, digest: [UInt8])?
        while handover == nil {
            guard case .success(let received)? = await fromSource.next(), let next = received else { return }
            switch next {
            case .handover(let generation, let finalVersion, let postcopy, let digest):
                handover = (generation, finalVersion, postcopy, digest)
            case .dirty(_, let chunks) where m.mode != .precopy && mirror != nil:
                guard chunks.allSatisfy({ $0 < chunkCount }), stale.count + chunks.count <= Int(chunkCount) else {
                    throw ProtocolViolation(.chunkOutOfRange, "the stale chunks named are not within the region's \(chunkCount)")
                }
                stale += chunks.map { Int($0) }
            case .error:
                return
            default:
                throw ProtocolViolation(.unexpectedFrame, "MIGRATE_READY is answered with HANDOVER, not \(next.name)")
            }
        }
        let (generation, finalVersion, postcopy, digest) = handover!
        guard generation == m.identity.generation + 1 else {
            throw ProtocolViolation(.migrationRefused, "HANDOVER offers generation \(generation), not \(m.identity.generation + 1)")
        }
        guard postcopy == (m.mode == .postcopy) || m.mode == .hybrid else {
            throw ProtocolViolation(.unexpectedFrame, "a \(m.mode.rawValue) migration handed over as \(postcopy ? "post" : "pre")-copy")
        }
        // The final WRITEs travel on the region stream, HANDOVER right
        // behind them on this one: wait here until the mirror applied them.
        var now: RegionMirror?
        if let runner, let mirror { now = try await appliedMirror(runner, readyMirror: mirror, finalVersion: finalVersion, m) }
        if postcopy {
            handedEarly = true
            try await commitPostCopy(m, generation: generation, runner: runner, mirror: now, stale: stale, frames: frames,
                                     source: source, pullFrom: pullFrom, early: early)
            return
        }
        guard let hashes, let runner, let now else {
            throw ProtocolViolation(.unexpectedFrame, "a pre-copy hand-over needs the mirror's copy")
        }
        guard let ours = hashes.digest else {
            throw ProtocolViolation(.internalError, "the hand-over hashes of '\(m.name)' are not ready")
        }
        // An empty digest: the source checks after the commit (`--verify after`).
        guard digest.isEmpty || ours == digest else {
            // Which side is wrong: our bytes, or our running table of them?
            let full = await FrozenRegionDigest.compute(now.region, key: key)
            let why = full == digest ? "its bytes are equal, its running hash table was not (a bug: please report it)"
                : full == ours ? "a full hash of it agrees: its bytes differ" : "and a full hash differs from both"
            throw ProtocolViolation(.handoverMismatch, "the copy of '\(m.name)' here does not hash to the source's frozen "
                                    + "region (\(why)): nothing committed")
        }
        let identity = RegionIdentity(id: m.identity.id, generation: generation)
        // Who may mirror it now: whom the old primary allowed, and the old
        // primary itself (it mirrors back after a hand-over by default).
        let allowed = runner.primaryAllow?.names.map { names in names.union([source.commonName].compactMap { $0 }) }
        do {
            // The commit point: from this write on, the region is ours.
            try identities?.acquire(region: m.name, path: runner.spec.path, identity: identity,
                                    chunkSize: now.region.geometry.chunkSize, allowedPeers: allowed)
        } catch {
            throw ProtocolViolation(.migrationRefused, "cannot record generation \(generation) in the state folder: \(error)")
        }
        migrations.withLock { $0.problems[m.name] = nil }
        let region = runner.stopForHandOver() ?? now.region
        removeMirror(runner)
        do {
            try exports.add(.init(region: region, allowedPeers: allowed, identity: identity))
        } catch {
            logger.error("'\(m.name)' is ours at generation \(generation) but cannot be exported: \(error)")
        }
        logger.notice("took '\(m.name)' over from \(source) at generation \(generation): exporting it from \(runner.spec.path)")
        try await frames.send(.handedOver(generation: generation))
        if digest.isEmpty {
            await checkAfterCommit(m.name, committed: ours, generation: generation, frames: frames, from: &fromSource)
        }
        try await frames.stream.finish()
        await runner.closeAfterHandOver()
    }

    /// Waits until the eager mirror applied `finalVersion` (the WRITEs up to
    /// it travel on the region stream, HANDOVER right behind them on the
    /// migration stream).
    private func appliedMirror(_ runner: MirrorRunner, readyMirror: RegionMirror, finalVersion: UInt64,
                               _ m: Frame.Migrate) async throws -> RegionMirror {
        let applyLimit = ContinuousClock.now + Self.finalWritesLimit
        while true {
            guard case .eager(let current)? = runner.mirror, current === readyMirror, runner.synced else {
                throw ProtocolViolation(.migrationRefused, "the mirror of '\(m.name)' reconnected during the migration")
            }
            if current.currentProgress.lastAppliedVersion >= finalVersion { return current }
            guard ContinuousClock.now < applyLimit else {
                throw ProtocolViolation(.handoverMismatch, "the mirror applied version \(current.currentProgress.lastAppliedVersion), "
                                        + "not the final \(finalVersion), within \(Self.finalWritesLimit)")
            }
            try await Task.sleep(for: .microseconds(200))
        }
    }

    /// Post-copy: the copy here becomes the region's owner at once. Chunks
    /// named stale (all, when nothing was held) are dropped and pulled from
    /// the frozen source; once every chunk is here the region is exported
    /// and a second HANDED_OVER tells the source to let go.
    private func commitPostCopy(_ m: Frame.Migrate, generation: UInt64, runner: MirrorRunner?, mirror: RegionMirror?,
                                stale: [Int], frames: FrameStream, source: PeerIdentity, pullFrom: PeerAddress,
                                early: Task<(any TransportConnection)?, Never>?) async throws {
        let path = try runner?.spec.path ?? takeOverPath(for: m)
        // No WRITE lands in the mapping from here: its stale chunks go next.
        _ = runner?.stopForHandOver()
        mirror?.haltWrites()
        let restartMirror = { [self] in
            guard let runner else { return }
            removeMirror(runner)
            startMirror(MirrorRunner(spec: runner.spec, endpoint: endpoint, statistics: statistics, logger: logger))
        }
        let lazy: PostCopyMirror
        do {
            let region = try mirror?.region ?? Region(name: m.name, backing: .file(path: path), size: Int(m.size),
                                                        chunkSize: Int(m.chunkSize))
            var options = postCopyOptions
            options.owner = true
            lazy = try PostCopyMirror(region: region, options: options,
                                      missing: mirror == nil ? Array(0..<region.geometry.chunkCount) : stale)
        } catch {
            restartMirror()
            throw ProtocolViolation(.migrationRefused, "cannot take '\(m.name)' over by post-copy here: \(error)")
        }
        let identity = RegionIdentity(id: m.identity.id, generation: generation)
        // Who may mirror it now: whom the old primary allowed (learnt from
        // its catalog), and the old primary itself. Without a mirror here
        // that list is unknown: the old primary alone, until configured.
        let formerPrimary = Set([source.commonName].compactMap { $0 })
        let allowed: Set<String>? = runner.map { $0.primaryAllow?.names.map { $0.union(formerPrimary) } } ?? formerPrimary
        do {
            // The commit point: from this write on, the region is ours.
            try identities?.acquire(region: m.name, path: path, identity: identity,
                                    chunkSize: lazy.region.geometry.chunkSize, allowedPeers: allowed,
                                    filling: pullFrom.description)
        } catch {
            lazy.stop()
            restartMirror()
            throw ProtocolViolation(.migrationRefused, "cannot record generation \(generation) in the state folder: \(error)")
        }
        migrations.withLock { $0.problems[m.name] = nil }
        if let runner { removeMirror(runner) }
        let takeOver = PostCopyTakeOver(name: m.name, mirror: lazy, source: pullFrom, sourceFingerprint: source.fingerprint,
                                        sourceIdentity: m.identity, endpoint: endpoint, logger: logger)
        takeOvers.withLock { $0[m.name] = takeOver }
        let pulling = lazy.progress.chunkCount - lazy.progress.chunksPresent
        logger.notice("took '\(m.name)' over from \(source) at generation \(generation) by post-copy: pulling \(pulling) chunks from it")
        // Committed: the fill runs whether or not this answer arrives (a
        // source that missed it asks again, `answerCommitQuery`).
        try? await frames.send(.handedOver(generation: generation))
        await runner?.closeAfterHandOver()
        // Unstructured: the fill outlives the migration stream (it
        // reconnects), and the stream's task may be cancelled.
        let filling = Task { await takeOver.fill(first: await early?.value) }
        await filling.value
        guard takeOver.complete else { return }
        do {
            try identities?.finishFill(region: m.name, path: path)
        } catch {
            logger.error("'\(m.name)' holds every chunk, but the state folder cannot record it: \(error)")
        }
        do {
            try exports.add(.init(region: lazy.region, allowedPeers: allowed, identity: identity))
        } catch {
            logger.error("'\(m.name)' is ours at generation \(generation) but cannot be exported: \(error)")
        }
        try? await frames.send(.handedOver(generation: generation))
        try? await frames.stream.finish()
    }

    /// `--verify after`: the source's digest of its frozen region, compared
    /// with our copy as it was at the commit. A difference cannot undo the
    /// hand-over (writers may be storing here already): it is logged, shown
    /// in status as the region's problem, and told to the source, which
    /// keeps its frozen copy.
    private func checkAfterCommit(_ name: String, committed: [UInt8], generation: UInt64, frames: FrameStream,
                                  from source: inout AsyncStream<Result<Frame?, any Error>>.Iterator) async {
        guard case .success(let frame)? = await source.next(), case .handoverCheck(let digest)? = frame else {
            logger.warning("'\(name)' was taken over without the source's check (it sent none)")
            migrations.withLock { $0.problems[name] = "taken over at generation \(generation) unchecked: the source sent no digest" }
            return
        }
        if digest == committed {
            logger.info("'\(name)': the hand-over checked equal to the source's frozen region")
            try? await frames.send(.handedOver(generation: generation))
            return
        }
        let problem = "this copy differed from the source's frozen region when it was taken over at generation "
            + "\(generation); the source keeps its frozen copy"
        logger.error("'\(name)': \(problem)")
        migrations.withLock { $0.problems[name] = problem }
        try? await frames.send(.error(code: ProtocolErrorCode.handoverMismatch.rawValue, message: problem))
    }

    /// A source whose hand-over broke asks whether we committed.
    private func answerCommitQuery(_ m: Frame.Migrate, on frames: FrameStream) async throws {
        // The commit point is the state folder's record; the export follows
        // it (after a post-copy fill only once every chunk is here), and a
        // region handed on since was committed here too.
        let recorded = identities?.allTakenOver().first { $0.name == m.name }?.identity
        let filling = takeOvers.withLock { $0[m.name] }.flatMap { $0.complete ? nil : $0.sourceIdentity }
        let known = [recorded, exports.export(named: m.name)?.identity, exports.moved(m.name)?.identity,
                     filling.map { RegionIdentity(id: $0.id, generation: $0.generation + 1) }].compactMap { $0 }
        guard known.contains(where: { $0.id == m.identity.id && $0.generation >= m.committing }) else {
            throw ProtocolViolation(.migrationRefused, "'\(m.name)' was not committed here at generation \(m.committing)")
        }
        try await frames.send(.handedOver(generation: m.committing))
        try await frames.stream.finish()
    }

    /// Waits until `runner` follows the region of `m` from `source`,
    /// synced; refuses at once what can never become true.
    private func syncedMirror(_ runner: MirrorRunner, for m: Frame.Migrate, from source: PeerIdentity,
                              sourceLeft: Locked<Bool>) async throws -> RegionMirror {
        let limit = ContinuousClock.now + Self.migrationSyncLimit
        while true {
            guard !sourceLeft.withLock({ $0 }) else {
                throw ProtocolViolation(.migrationAborted, "the source ended the migration of '\(m.name)' before it was ready")
            }
            if let followed = runner.followedIdentity {
                guard followed.id == m.identity.id else {
                    throw ProtocolViolation(.migrationRefused, "the mirror of '\(m.name)' here follows another region "
                                            + "(id \(followed.id.prefix(8))…) of that name")
                }
                guard followed.generation <= m.identity.generation else {
                    throw ProtocolViolation(.staleGeneration, "this peer followed generation \(followed.generation) of "
                                            + "'\(m.name)'; the source offers \(m.identity.generation): a newer owner exists")
                }
            }
            if runner.synced, runner.followedIdentity == m.identity, case .eager(let mirror)? = runner.mirror {
                guard runner.primaryIdentity?.fingerprint == source.fingerprint else {
                    throw ProtocolViolation(.migrationRefused, "the mirror of '\(m.name)' follows "
                                            + "\(runner.primaryIdentity.map { "\($0)" } ?? "another peer"), not \(source)")
                }
                let g = mirror.region.geometry
                guard UInt64(g.size) == m.size, UInt64(g.chunkSize) == m.chunkSize else {
                    throw ProtocolViolation(.geometryMismatch, "the mirror of '\(m.name)' is \(g.size) bytes in "
                                            + "\(g.chunkSize)-byte chunks")
                }
                return mirror
            }
            guard ContinuousClock.now < limit else {
                throw ProtocolViolation(.migrationRefused, "the mirror of '\(m.name)' did not sync within \(Self.migrationSyncLimit)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
