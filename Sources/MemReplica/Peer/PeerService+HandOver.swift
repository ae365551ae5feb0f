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
        let source = connection.peerIdentity
        if m.committing != 0 {
            try await answerCommitQuery(m, on: frames)
            return
        }
        guard let key = ChunkHashKey(bytes: m.hashKey) else {
            throw ProtocolViolation(.malformedFrame, "MIGRATE carries a \(ChunkHashKey.byteCount)-byte hash key")
        }
        var started: MirrorRunner?
        let runner: MirrorRunner
        if let existing = mirrors.first(where: { $0.spec.name == m.name }) {
            runner = existing
        } else {
            runner = try startMirror(for: m, from: connection)
            started = runner
        }
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
            try await commit(m, key: key, runner: runner, source: source, frames: frames,
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
        guard m.mode == .precopy, m.sourcePort != 0 else {
            throw ProtocolViolation(.migrationRefused, "a migration to a peer that does not mirror the region needs pre-copy "
                                    + "and the source's port")
        }
        let spec: MirrorSpec
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            let address = try PeerAddress(host: connection.remoteAddress.host, port: UInt16(m.sourcePort))
            spec = try MirrorSpec(name: m.name, address: address, path: folder + "/" + AtomicFile.safeName(m.name) + ".region",
                                  expectedPrimary: .fingerprint(connection.peerIdentity.fingerprint))
        } catch {
            throw ProtocolViolation(.migrationRefused, "cannot mirror '\(m.name)' from the source: \(error)")
        }
        let runner = MirrorRunner(spec: spec, endpoint: endpoint, statistics: statistics, logger: logger)
        startMirror(runner)
        logger.notice("mirroring '\(m.name)' from \(spec.address) into \(spec.path): it is being migrated to this peer")
        return runner
    }

    private func commit(_ m: Frame.Migrate, key: ChunkHashKey, runner: MirrorRunner, source: PeerIdentity, frames: FrameStream,
                        incoming: AsyncStream<Result<Frame?, any Error>>, sourceLeft: Locked<Bool>) async throws {
        guard !runner.spec.lazy else {
            throw ProtocolViolation(.migrationRefused, "'\(m.name)' is a lazy mirror here; \(m.mode.rawValue) needs an eager one")
        }
        let mirror = try await syncedMirror(runner, for: m, from: source, sourceLeft: sourceLeft)
        let readyMirror = ObjectIdentifier(mirror)
        // Hashed now, kept current as WRITEs arrive: at HANDOVER our side
        // of the check is ready while the source's writers are frozen.
        let hashes = await mirror.startHandOverHashes(key: key)
        try await frames.send(.migrateReady(generation: m.identity.generation,
                                            appliedVersion: mirror.currentProgress.lastAppliedVersion))
        var fromSource = incoming.makeAsyncIterator()
        guard case .success(let received)? = await fromSource.next(), let next = received else { return }
        guard case .handover(let generation, let finalVersion, let digest) = next else {
            if case .error = next { return }
            throw ProtocolViolation(.unexpectedFrame, "MIGRATE_READY is answered with HANDOVER, not \(next.name)")
        }
        guard generation == m.identity.generation + 1 else {
            throw ProtocolViolation(.migrationRefused, "HANDOVER offers generation \(generation), not \(m.identity.generation + 1)")
        }
        // The final WRITEs travel on the region stream, HANDOVER right
        // behind them on this one: wait here until the mirror applied them.
        let applyLimit = ContinuousClock.now + Self.finalWritesLimit
        var now: RegionMirror
        while true {
            guard case .eager(let current)? = runner.mirror, ObjectIdentifier(current) == readyMirror, runner.synced else {
                throw ProtocolViolation(.migrationRefused, "the mirror of '\(m.name)' reconnected during the migration")
            }
            now = current
            if current.currentProgress.lastAppliedVersion >= finalVersion { break }
            guard ContinuousClock.now < applyLimit else {
                throw ProtocolViolation(.handoverMismatch, "the mirror applied version \(current.currentProgress.lastAppliedVersion), "
                                        + "not the final \(finalVersion), within \(Self.finalWritesLimit)")
            }
            try await Task.sleep(for: .microseconds(200))
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
        guard let export = exports.export(named: m.name), export.identity.id == m.identity.id,
              export.identity.generation >= m.committing else {
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
