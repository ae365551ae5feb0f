import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// The destination's side of a migration: a MIGRATE stream from the peer
/// this one mirrors the region from (docs/MIGRATION.md).
extension PeerService {
    /// How long a destination waits for its mirror to sync before it
    /// answers MIGRATE_READY (the source's own timeout usually ends it first).
    public static let migrationSyncLimit: Duration = .seconds(600)

    func takeOver(_ m: Frame.Migrate, on frames: FrameStream, from connection: any TransportConnection) async throws {
        let source = connection.peerIdentity
        if m.committing != 0 {
            try await answerCommitQuery(m, on: frames)
            return
        }
        guard let runner = mirrors.first(where: { $0.spec.name == m.name }) else {
            throw ProtocolViolation(.migrationRefused, "this peer does not mirror '\(m.name)': it can take over only a "
                                    + "region it mirrors from the source")
        }
        guard !runner.spec.lazy else {
            throw ProtocolViolation(.migrationRefused, "'\(m.name)' is a lazy mirror here; \(m.mode.rawValue) needs an eager one")
        }
        guard let key = ChunkHashKey(bytes: m.hashKey) else {
            throw ProtocolViolation(.malformedFrame, "MIGRATE carries a \(ChunkHashKey.byteCount)-byte hash key")
        }
        let mirror = try await syncedMirror(runner, for: m, from: source)
        let readyMirror = ObjectIdentifier(mirror)
        try await frames.send(.migrateReady(generation: m.identity.generation,
                                            appliedVersion: mirror.currentProgress.lastAppliedVersion))
        guard let next = try await frames.receive() else { return }
        guard case .handover(let generation, let finalVersion, let digest) = next else {
            if case .error = next { return }
            throw ProtocolViolation(.unexpectedFrame, "MIGRATE_READY is answered with HANDOVER, not \(next.name)")
        }
        guard generation == m.identity.generation + 1 else {
            throw ProtocolViolation(.migrationRefused, "HANDOVER offers generation \(generation), not \(m.identity.generation + 1)")
        }
        guard case .eager(let now)? = runner.mirror, ObjectIdentifier(now) == readyMirror, runner.synced else {
            throw ProtocolViolation(.migrationRefused, "the mirror of '\(m.name)' reconnected during the migration")
        }
        guard now.currentProgress.lastAppliedVersion >= finalVersion else {
            throw ProtocolViolation(.handoverMismatch, "the mirror applied version \(now.currentProgress.lastAppliedVersion), "
                                    + "not the final \(finalVersion)")
        }
        let ours = await FrozenRegionDigest.compute(now.region, key: key)
        guard ours == digest else {
            throw ProtocolViolation(.handoverMismatch, "the copy of '\(m.name)' here does not hash to the source's frozen "
                                    + "region: nothing committed")
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
        let region = runner.stopForHandOver() ?? now.region
        removeMirror(runner)
        do {
            try exports.add(.init(region: region, allowedPeers: allowed, identity: identity))
        } catch {
            logger.error("'\(m.name)' is ours at generation \(generation) but cannot be exported: \(error)")
        }
        logger.notice("took '\(m.name)' over from \(source) at generation \(generation): exporting it from \(runner.spec.path)")
        try await frames.send(.handedOver(generation: generation))
        try await frames.stream.finish()
        await runner.closeAfterHandOver()
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
    private func syncedMirror(_ runner: MirrorRunner, for m: Frame.Migrate, from source: PeerIdentity) async throws -> RegionMirror {
        let limit = ContinuousClock.now + Self.migrationSyncLimit
        while true {
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
