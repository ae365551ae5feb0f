import MemReplicaTransportCore
import Foundation

/// `memreplica stats` and the metrics endpoint: the peer's counters,
/// assembled from its transport, exports and mirrors, and its
/// `PeerStatistics`.
extension PeerService {
    /// How often readings that are not events get sampled: fault
    /// latencies collected, dirty-scan totals noted for the rate, and the
    /// Prometheus series refreshed.
    public static let statisticsInterval: Duration = .seconds(1)

    /// The report as `peer` may see it over HTTP/3: only the regions the
    /// allow rules let it see (the control socket's report has them all).
    public func statsReport(visibleTo peer: PeerIdentity) async -> StatsReport {
        var report = await statsReport()
        report.regions = report.regions.filter { mayRead($0.name, role: $0.role, peer: peer) }
        report.migrations = report.migrations?.filter { mayRead($0.region, role: "primary", peer: peer) }
        return report
    }

    /// Whether `peer` may learn of or read region `name` here: an export's
    /// allow list, or for a replica its primary's list narrowed by its own.
    public func mayRead(_ name: String, role: String, peer: PeerIdentity) -> Bool {
        if role == "primary" { return exports.export(named: name)?.allow.permits(peer) ?? false }
        return mirrors.first { $0.spec.name == name }?.servingRule.permits(peer) ?? false
    }

    public func statsReport() async -> StatsReport {
        collectSamples()
        let summaries = await endpoint.connectionSummaries()
        let connections = summaries.map { summary in
            StatsReport.Connection(summary, reconnects: statistics.reconnects(fingerprint: summary.identity.fingerprint,
                                                                              initiatedLocally: summary.initiatedLocally))
        }
        let me = endpoint.localIdentity
        var report = StatsReport(
            version: memReplicaVersion, peer: me.commonName ?? me.subject, takenAt: Date(),
            uptimeSeconds: Date().timeIntervalSince(startedAt),
            windowSeconds: (statistics.slotDuration * statistics.slots).seconds,
            connections: connections.sorted { ($0.peer, $0.remoteAddress) < ($1.peer, $1.remoteAddress) },
            regions: primaryStatistics() + replicaStatistics(), memory: endpoint.memoryBudget)
        let migrations = self.migrations.withLock { $0.statistics }
        report.migrations = migrations.isEmpty ? nil : migrations
        return report
    }

    /// Feeds `dirtyHistory` one bin at a time until cancelled. A region
    /// whose mirrors armed a write-protect tracker is scanned every bin
    /// through a subscription of its own (cheap: the scan's cost follows the
    /// pages written; what it finds still reaches the mirrors); it is let
    /// go when it is the region's last subscriber, so no tracker stays
    /// armed for the history alone.
    func sampleDirtyHistory() async {
        var own: [String: ChangeSubscription] = [:]
        defer { for subscription in own.values { subscription.cancel() } }
        while !Task.isCancelled {
            let tracking = exports.dirtyTracking()
            var changed: [String: Int] = [:], totals: [String: Int] = [:]
            for (name, status) in tracking {
                if let subscription = own[name] {
                    guard status.kind == .writeProtect, status.subscribers > 1,
                          subscription.feed.region === exports.export(named: name)?.region else {
                        subscription.cancel()
                        own[name] = nil
                        continue
                    }
                    changed[name] = subscription.changedChunks().count
                } else if status.kind == .writeProtect, let region = exports.export(named: name)?.region {
                    own[name] = RegionChangeFeed.subscribe(to: region, logger: logger)
                } else {
                    totals[name] = status.statistics.totalChangedChunks
                }
            }
            for (name, subscription) in own where tracking[name] == nil {
                subscription.cancel()
                own[name] = nil
            }
            dirtyHistory.record(changed: changed, totals: totals)
            do { try await Task.sleep(for: DirtyRateHistory.binDuration) } catch { return }
        }
    }

    /// Samples until cancelled (the peer's `run` does when it ends).
    func sampleStatistics() async {
        while !Task.isCancelled {
            if let metrics = statistics.metrics {
                metrics.update(from: await statsReport())
            } else {
                collectSamples()
            }
            do { try await Task.sleep(for: Self.statisticsInterval) } catch { return }
        }
    }

    /// Moves what is read rather than heard into the statistics. Fault
    /// latencies enter the histograms here, up to `statisticsInterval`
    /// after the fault was served: the window may hold a sample that long
    /// past its slot, a drift far below the window's length.
    private func collectSamples() {
        // A region whose file was truncated is logged even with no mirror.
        exports.checkRegions()
        for (name, status) in exports.dirtyTracking() {
            statistics.sampleDirty(region: name, total: status.statistics.totalChangedChunks)
        }
        for runner in mirrors {
            guard case .lazy(let mirror)? = runner.mirror else { continue }
            for latency in mirror.takeFaultLatencies() {
                statistics.record(.faultLatency, region: runner.spec.name, latency)
            }
        }
    }

    private func primaryStatistics() -> [StatsReport.Region] {
        let mirrorStates = exports.mirrorStates()
        let tracking = exports.dirtyTracking()
        let savings = exports.wireSavings()
        return exports.catalog().compactMap { entry -> StatsReport.Region? in
            guard let r = exports.export(named: entry.name)?.region else { return nil }
            var region = StatsReport.Region(name: r.name, role: "primary", size: r.geometry.size, chunkSize: r.geometry.chunkSize)
            region.regionID = entry.identity.id
            region.generation = entry.identity.generation
            let moved = statistics.transfers(region: r.name)
            region.chunksPushed = moved.chunksPushed
            region.bytesPushed = moved.bytesPushed
            region.chunksPulled = moved.chunksPulled
            region.bytesPulled = moved.bytesPulled
            region.wire = savings[r.name]
            if let status = tracking[r.name] {
                region.scan = StatsReport.Scan(status)
                if let rate = statistics.dirtyRate(region: r.name) {
                    region.dirtyChunksPerSecond = rate
                    region.dirtyBytesPerSecond = rate * Double(r.geometry.chunkSize)
                }
            }
            region.replicas = mirrorStates.filter { $0.region == r.name }.map { m in
                StatsReport.Replica(peer: m.peer, synced: m.synced, sentVersion: m.sentVersion,
                                    acknowledgedVersion: m.acknowledgedVersion, versionLag: m.versionLag,
                                    timeLagSeconds: m.versionLag == 0 ? 0 : statistics.timeLag(region: r.name, peer: m.peer).seconds)
            }
            region.replicationLag = statistics.latency(.replicationLag, region: r.name)
            region.readLatency = statistics.latency(.readLatency, region: r.name)
            region.problem = r.failure
            return region
        }
    }

    private func replicaStatistics() -> [StatsReport.Region] {
        mirrors.map { runner in
            var region = StatsReport.Region(name: runner.spec.name, role: "replica", size: 0, chunkSize: 0)
            region.lazy = runner.spec.lazy
            region.source = runner.spec.address.description
            region.reconnects = runner.reconnects
            region.regionID = runner.followedIdentity?.id
            region.generation = runner.followedIdentity?.generation
            region.synced = runner.synced
            region.problem = runner.problem
            region.durableComplete = runner.durableRecord?.complete
            switch runner.mirror {
            case nil:
                break
            case .eager(let m)?:
                let p = m.currentProgress
                let g = m.region.geometry
                region.size = g.size
                region.chunkSize = g.chunkSize
                region.chunksPresent = p.synced ? g.chunkCount : p.chunksPresent
                region.lastAppliedVersion = p.lastAppliedVersion
                region.chunksPushed = UInt64(p.chunksApplied)
            case .lazy(let m)?:
                let p = m.progress
                region.size = m.region.geometry.size
                region.chunkSize = m.region.geometry.chunkSize
                region.chunksPresent = p.chunksPresent
                region.lastAppliedVersion = p.lastEpoch
                region.faults = p.faults
                region.faultsServed = p.faultsServed
                region.faultLatency = statistics.latency(.faultLatency, region: runner.spec.name)
            }
            return region
        }
    }
}
