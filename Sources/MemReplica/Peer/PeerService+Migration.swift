import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// The source's side of a migration: `memreplica migrate`, the control
/// socket's `migrate` request, or a library call.
extension PeerService {
    /// Hands `request.region` over to `request.destination` (which must be
    /// running and allowed to mirror it). Returns the report whether the
    /// migration was handed over or aborted; throws `MigrationError` only
    /// for a request that cannot start (bad usage).
    ///
    /// `freeze` is how this process's own writers of the region stop for
    /// the final flush; attached writer processes are stopped with SIGSTOP.
    public func migrate(_ request: MigrationRequest, freeze: MigrationFreeze? = nil) async throws -> MigrationReport {
        let name = request.region
        guard request.maxDowntimeMilliseconds > 0, request.timeoutSeconds > 0 else {
            throw MigrationError("the downtime budget and the timeout must be positive")
        }
        guard let export = exports.export(named: name) else {
            if let moved = exports.moved(name) {
                throw MigrationError("'\(name)' was handed over to \(moved.owner) at generation \(moved.identity.generation): "
                                     + "run migrate on its owner")
            }
            if mirrors.contains(where: { $0.spec.name == name }) {
                throw MigrationError("'\(name)' is a replica here: run migrate on the peer that owns it")
            }
            throw MigrationError(Self.oneLine("no region named '\(name)' on this peer"))
        }
        let address: PeerAddress
        do {
            address = try PeerAddress(parsing: request.destination)
        } catch {
            throw MigrationError(Self.oneLine("destination '\(request.destination)': \(error)"))
        }
        let began = migrations.withLock { book -> Bool in
            guard book.running[name] == nil else { return false }
            book.running[name] = .initial
            return true
        }
        guard began else { throw MigrationError("a migration of '\(name)' is running already") }
        logger.notice("""
            migrating '\(name)' to \(request.destination) (\(request.mode.rawValue), max downtime \
            \(request.maxDowntimeMilliseconds) ms, timeout \(request.timeoutSeconds) s)
            """)
        // Who the destination turned out to be (its certificate), for a
        // post-copy source that serves it alone.
        let destinationFingerprint = Locked<String?>(nil)
        let session = SourceMigration(
            request: request, export: export, address: address, exports: exports, endpoint: endpoint,
            identities: identities, freeze: freeze,
            attachedWriters: { [attachments] in
                attachments.withLock { $0.open.values.filter { $0.region == name && $0.process.mode == "writer" }.map(\.process.pid) }
            },
            report: { [migrations] progress in migrations.withLock { $0.running[name] = progress } },
            connected: { identity in destinationFingerprint.withLock { $0 = identity.fingerprint } },
            dirtySeries: { [dirtyHistory] in dirtyHistory.series(of: name) },
            onHandedOver: { [self] next, postcopy in
                if postcopy {
                    // The new owner pulls what it lacks from this frozen
                    // copy: served to it alone until it holds every chunk.
                    exports.serveOnly(name, to: destinationFingerprint.withLock { $0 })
                    endWriterSessions(of: name, reason: movedReason(name, owner: request.destination, generation: next.generation))
                } else {
                    fence(name, at: next, owner: request.destination)
                }
                await freeze?.resume(true)
            },
            logger: logger)
        let result = await session.run()
        if result.uncertain {
            fence(name, at: .init(id: export.identity.id, generation: export.identity.generation + 1),
                  owner: "\(request.destination) (unconfirmed)")
        }
        let next = RegionIdentity(id: export.identity.id, generation: export.identity.generation + 1)
        if result.handedOver, result.postcopy {
            if result.filled {
                fence(name, at: next, owner: request.destination)
            } else {
                migrations.withLock {
                    $0.problems[name] = "handed over to \(request.destination) by post-copy; its fill was not confirmed, so "
                        + "this peer keeps serving its frozen copy to it"
                }
            }
        }
        if result.handedOver, request.then == .mirror, !result.postcopy || result.filled {
            mirrorBack(export, from: address, owner: result.destinationIdentity)
        }
        let report = result.report
        migrations.withLock { book in
            book.running[name] = nil
            book.last[name] = report
            book.outcomes[name, default: [:]][report.outcome, default: 0] += 1
        }
        let downtime = report.downtimeMilliseconds.map { String(format: ", downtime %.1f ms", $0) } ?? ""
        logger.notice("migration of '\(name)' to \(request.destination): \(report.outcome)\(downtime)\(report.reason.map { ": \($0)" } ?? "")")
        return report
    }

    /// Never a primary of `name` at the old generation again: new
    /// subscriptions and the mirrors still following end with
    /// `stale_generation` naming the owner; attached writers' sessions end.
    private func fence(_ name: String, at next: RegionIdentity, owner: String) {
        exports.relinquish(name, movedTo: .init(identity: next, owner: owner))
        endWriterSessions(of: name, reason: movedReason(name, owner: owner, generation: next.generation))
        // Taken over by post-copy earlier: its mapping (and the readers
        // attached to it during that fill) retire with the region.
        takeOvers.withLock { $0.removeValue(forKey: name) }?.mirror.stop()
    }

    private func movedReason(_ name: String, owner: String, generation: UInt64) -> String {
        "region '\(name)' moved to \(owner) at generation \(generation); this process stays stopped (its stores "
            + "would reach a copy nobody replicates): restart it against the new owner"
    }

    /// Ends the attach sessions of `region`'s writers, telling them why.
    private func endWriterSessions(of region: String, reason: String) {
        let ends = attachments.withLock { $0.open.values.filter { $0.region == region && $0.process.mode == "writer" }.compactMap(\.end) }
        for end in ends { end(reason) }
    }

    /// `--then mirror`: the region's file follows its new owner from now on
    /// (a resuming mirror: only chunks that differ travel).
    private func mirrorBack(_ export: RegionExports.Export, from address: PeerAddress, owner: PeerIdentity?) {
        guard case .file(let path) = export.region.backing else {
            logger.notice("'\(export.region.name)' is not file-backed: not mirroring it back from its new owner")
            return
        }
        let spec: MirrorSpec
        do {
            spec = try MirrorSpec(name: export.region.name, address: address, path: path,
                                  expectedPrimary: owner.map { .fingerprint($0.fingerprint) })
        } catch {
            logger.error("cannot mirror '\(export.region.name)' back from \(address): \(error)")
            return
        }
        startMirror(MirrorRunner(spec: spec, endpoint: endpoint, statistics: statistics, logger: logger))
        logger.notice("'\(export.region.name)' now mirrors its new owner \(address) into \(path)")
    }
}
