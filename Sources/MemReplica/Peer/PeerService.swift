import MemReplicaSystem
import MemReplicaTransportCore
import Foundation
import Logging
import SystemPackage

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
    let logger: Logger
    private let echo: DiagnosticEcho
    public let exports: RegionExports
    /// The mirrors running now: a hand-over removes the one whose region
    /// became ours, and adds one when we follow a region we handed over.
    public var mirrors: [MirrorRunner] { mirrorList.withLock { $0 } }
    private let mirrorList: Locked<[MirrorRunner]>
    /// Mirrors started after `run` began, so `run` can stop them.
    private let addedMirrors = Locked<[Task<Void, Never>]>([])
    /// The mirrors' connections: one per primary, shared by all its mirrors.
    public let primaryConnections: PrimaryConnections
    /// Where region identities and hand-overs are kept (nil: in memory only,
    /// e.g. a library user without a state folder).
    public let identities: RegionIdentityStore?
    /// Where a region handed to this peer without a mirror of it goes: the
    /// peer then starts the mirror itself (`peer --accept-migrations DIR`);
    /// nil refuses such a migration.
    public let acceptMigrationsInto: String?
    /// How a region taken over by post-copy pulls what it lacks (window,
    /// batch, how long an attached reader may wait on a missing chunk).
    public let postCopyOptions: PostCopyMirror.Options
    /// Regions in a migration now (one at a time each), and the last
    /// report of each.
    let migrations = Locked(MigrationBook())
    /// Regions taken over by post-copy: filling while incomplete; kept
    /// after that for the processes attached during the fill.
    let takeOvers = Locked<[String: PostCopyTakeOver]>([:])
    /// Each exported region's dirty rate over the last minute (`--when quiet`).
    public let dirtyHistory = DirtyRateHistory()
    /// What `memreplica stats` and the metrics endpoint report; the
    /// exports and mirrors should have been given the same one.
    public let statistics: PeerStatistics
    /// Attach sessions open now, by a number of their own: region and process.
    let attachments = Locked((next: 0, open: [Int: Attachment]()))

    struct Attachment {
        var region: String
        var process: StatusReport.Region.AttachedProcess
        /// Ends the session, telling the process why.
        var end: (@Sendable (String) -> Void)?
    }

    public init(endpoint: any Transport, exports: RegionExports? = nil, mirrors: [MirrorRunner] = [],
                statistics: PeerStatistics = PeerStatistics(), identities: RegionIdentityStore? = nil,
                acceptMigrationsInto: String? = nil, postCopyOptions: PostCopyMirror.Options = .init(), logger: Logger) {
        self.postCopyOptions = postCopyOptions
        mirrorList = Locked(mirrors)
        self.identities = identities
        self.acceptMigrationsInto = acceptMigrationsInto
        self.statistics = statistics
        self.endpoint = endpoint
        self.logger = logger
        self.exports = exports ?? RegionExports([], logger: logger)
        echo = DiagnosticEcho(logger: logger)
        primaryConnections = PrimaryConnections(endpoint: endpoint, statistics: statistics, logger: logger)
        startedAt = Date()
        started = .now
    }

    /// Serves until the endpoint is closed and every connection has ended.
    public func run() async {
        let identity = endpoint.localIdentity
        logger.notice("listening on \(endpoint.localAddress) as \(identity.commonName ?? identity.subject) (sha256 \(identity.fingerprint))")
        await withDiscardingTaskGroup { group in
            for mirror in mirrors {
                group.addTask { await mirror.run(using: self.primaryConnections) }
            }
            group.addTask { await self.sampleStatistics() }
            group.addTask { await self.sampleDirtyHistory() }
            while let connection = await endpoint.accept() {
                group.addTask { await self.serve(connection) }
            }
            // The endpoint is closed: stop the mirrors' reconnect loops.
            group.cancelAll()
        }
        let added = addedMirrors.withLock { tasks in defer { tasks.removeAll() }; return tasks }
        for task in added { task.cancel() }
        for task in added { await task.value }
    }

    /// Starts a mirror while the peer runs (after handing a region over).
    func startMirror(_ runner: MirrorRunner) {
        mirrorList.withLock { $0.append(runner) }
        addedMirrors.withLock { $0.append(Task { await runner.run(using: self.primaryConnections) }) }
    }

    /// Forgets a mirror that ended for good (its region was handed to us).
    func removeMirror(_ runner: MirrorRunner) {
        mirrorList.withLock { $0.removeAll { $0 === runner } }
    }

    private func serve(_ connection: any TransportConnection) async {
        let peer = "\(connection.remoteAddress)"
        statistics.connectionEstablished(fingerprint: connection.peerIdentity.fingerprint, initiatedLocally: false)
        // What the peer's HELLO said it can receive; its region streams
        // come after our answer to it.
        let offered = Locked<WireCapabilities>([])
        await withDiscardingTaskGroup { group in
            do {
                while true {
                    let stream = try await connection.acceptStream()
                    group.addTask { await self.route(stream, connection: connection, peer: peer, offered: offered) }
                }
            } catch {
                logger.info("peer disconnected: \(error)", metadata: ["peer": "\(peer)", "identity": "\(connection.peerIdentity)"])
            }
        }
    }

    /// How long a peer may leave a stream it opened without a first frame:
    /// each such stream holds a task and one of its connection's stream slots.
    public static let firstFrameTimeout: Duration = .seconds(10)

    /// The stream's first frame, or a reset stream and an error once
    /// `firstFrameTimeout` passed without one.
    private static func firstFrame(of frames: FrameStream) async throws -> Frame? {
        try await withThrowingTaskGroup(of: Frame?.self) { group in
            group.addTask { try await frames.receive() }
            group.addTask {
                try await Task.sleep(for: firstFrameTimeout)
                // Ends the read above, which reports the reset.
                await frames.stream.reset(errorCode: ProtocolErrorCode.peerStalled.rawValue)
                throw TransportError.peerStalled(seconds: firstFrameTimeout.seconds)
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
    }

    private func route(_ stream: any TransportStream, connection: any TransportConnection, peer: String,
                       offered: Locked<WireCapabilities>) async {
        // What the peer's requests make us hold stays within its connection's allowance.
        let frames = FrameStream(stream, boundedBy: stream.frameAllowance)
        do {
            let first = try await Self.firstFrame(of: frames)
            if let frame = first, stream.receivedEarlyData, !frame.mayArriveAsEarlyData {
                // Replayable bytes may only ask for what is safe to repeat.
                throw ProtocolViolation(.unexpectedFrame, "\(frame.name) may not be sent as 0-RTT early data; only HELLO may")
            }
            switch first {
            case .subscribe(let subscription)?:
                await exports.serve(frames, subscription: subscription, peer: connection.peerIdentity,
                                    offered: offered.withLock { $0 })
            case .lane(let token, let index)?:
                try await exports.joinLane(frames, token: token, index: index, peer: connection.peerIdentity)
            case .hello(let hello)?:
                offered.withLock { $0 = WireCapabilities(rawValue: hello.capabilities) }
                try await answerHello(hello, on: frames, peer: connection.peerIdentity)
            case .echo(let bytes)?:
                try await echo.serve(frames, first: bytes, peer: peer)
            case .migrate(let migration)?:
                try await takeOver(migration, on: frames, from: connection)
            case let other?:
                throw ProtocolViolation(.unexpectedFrame, "a stream starts with HELLO, SUBSCRIBE, LANE, ECHO or MIGRATE, not \(other)")
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

    /// Control stream: our HELLO, then the catalog of what we export to
    /// this peer (regions its allow lists leave it out of are not named).
    private func answerHello(_ hello: Frame.Hello, on frames: FrameStream, peer: PeerIdentity) async throws {
        guard hello.protocolVersion == Frame.protocolVersion else {
            throw ProtocolViolation(.unsupportedVersion, "this peer speaks protocol \(Frame.protocolVersion), not \(hello.protocolVersion)")
        }
        let me = endpoint.localIdentity
        try await frames.send(.hello(.init(peerName: me.commonName ?? me.subject,
                                           capabilities: exports.wireCapabilities.rawValue)))
        try await frames.send(.catalog(exports.catalog(for: peer)))
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
            region.regionID = entry.identity.id
            region.generation = entry.identity.generation
            region.mirrors = states.filter { $0.region == r.name }.map {
                .init(peer: $0.peer, sentVersion: $0.sentVersion, acknowledgedVersion: $0.acknowledgedVersion,
                      versionLag: $0.versionLag, synced: $0.synced, passStreams: $0.passStreams > 0 ? $0.passStreams : nil)
            }
            region.problem = r.failure
            return region
        }
        let replicas = mirrors.map { runner -> StatusReport.Region in
            var region = replicaStatus(runner)
            region.regionID = runner.followedIdentity?.id
            region.generation = runner.followedIdentity?.generation
            region.synced = runner.synced
            region.problem = runner.problem
            region.durable = runner.durableRecord.map {
                .init(complete: $0.complete, version: $0.version, generation: $0.generation, recordedAt: $0.writtenAt)
            }
            return region
        }
        let filling = takeOvers.withLock { Array($0.values) }.filter { !$0.complete }.map { t -> StatusReport.Region in
            let m = t.mirror, p = m.progress
            var region = StatusReport.Region(name: t.name, role: "primary", path: m.region.backing.description,
                                             size: m.region.geometry.size, chunkSize: m.region.geometry.chunkSize,
                                             chunks: p.chunkCount, chunksPresent: p.chunksPresent,
                                             source: t.source.description)
            region.regionID = t.sourceIdentity.id
            region.generation = t.sourceIdentity.generation + 1
            region.lazy = .init(faults: p.faults, faultsServed: p.faultsServed, chunksInvalidated: p.chunksInvalidated,
                                oldestFaultWaitingSeconds: p.oldestFaultWaiting.map { ($0.duration(to: .now)).seconds },
                                installsPending: p.installsPending, installError: p.installError,
                                readersFailed: p.readersFailed)
            region.problem = t.problem.map { "taken over by post-copy, \(p.chunkCount - p.chunksPresent) chunks still at the source: \($0)" }
            return region
        }
        let names = Set((primaries + replicas + filling).map(\.name))
        let moved = exports.movedRegions().filter { !names.contains($0.key) }.sorted { $0.key < $1.key }.map { name, moved in
            var region = StatusReport.Region(name: name, role: "handed over", path: "", size: 0, chunkSize: 0, chunks: 0)
            region.regionID = moved.identity.id
            region.generation = moved.identity.generation
            region.problem = "moved to \(moved.owner) at generation \(moved.identity.generation)"
            return region
        }
        let attached = attachments.withLock { Array($0.open.values) }
        let book = migrations.withLock { $0 }
        return (primaries + replicas + filling + moved).map { region in
            var region = region
            region.attached = attached.filter { $0.region == region.name }.map(\.process)
                .sorted { ($0.pid, $0.mode) < ($1.pid, $1.mode) }
            region.migration = book.running[region.name]
            region.lastMigration = book.last[region.name]
            if region.role == "primary", region.problem == nil { region.problem = book.problems[region.name] }
            return region
        }
    }

    private func replicaStatus(_ runner: MirrorRunner) -> StatusReport.Region {
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
                                oldestFaultWaitingSeconds: p.oldestFaultWaiting.map { ($0.duration(to: .now)).seconds },
                                installsPending: p.installsPending, installError: p.installError,
                                readersFailed: p.readersFailed)
            return region
            }
    }

    /// Decides a control-socket `attach`: which region, and whether this
    /// process's descriptor can be used (see `AttachRequest`).
    public func attach(_ request: AttachRequest, from process: AttachingProcess) -> AttachOutcome {
        let outcome = decideAttach(request, from: process)
        guard case .accepted(let answer, let detach?) = outcome else { return outcome }
        // A session: listed in status until it ends.
        let entry = Attachment(region: answer.region,
                               process: .init(pid: process.pid, mode: answer.lazy ? "lazy reader" : "writer"),
                               end: process.endSession)
        let id = attachments.withLock { a -> Int in
            a.next += 1
            a.open[a.next] = entry
            return a.next
        }
        return .accepted(answer, detach: { [attachments] in
            detach()
            attachments.withLock { _ = $0.open.removeValue(forKey: id) }
        })
    }

    private func decideAttach(_ request: AttachRequest, from process: AttachingProcess) -> AttachOutcome {
        // Reasons quote what the client sent, and are logged and shown as one line.
        func refuse(_ message: String) -> AttachOutcome { .refused(Self.oneLine(message)) }
        if let role = request.role, role != "primary", role != "replica" {
            return refuse("role must be \"primary\" or \"replica\", not \"\(role)\"")
        }
        if process.userfaultfd != nil, request.base == nil || request.length == nil {
            return refuse("an attach with a descriptor needs base and length (the client's mapping)")
        }
        if process.userfaultfd == nil, request.base != nil || request.length != nil {
            return refuse("base and length come with a descriptor (SCM_RIGHTS); a lookup has neither")
        }
        if let taken = takeOvers.withLock({ $0[request.region] }), !taken.complete {
            // Its missing chunks fault in from the old owner: readers map it
            // like a lazy replica's. A writer's stores must be tracked from
            // its first, which the fill's fault path does not do yet.
            if request.role == "primary" {
                let p = taken.mirror.progress
                return refuse("region '\(request.region)' was taken over by post-copy and is still being filled "
                              + "(\(p.chunksPresent) of \(p.chunkCount) chunks here): writers attach once it holds every chunk")
            }
            let outcome = Self.attach(request, from: process, toLazy: taken.mirror, logger: logger)
            guard case .accepted(var answer, let detach) = outcome else { return outcome }
            answer.synced = false
            return .accepted(answer, detach: detach)
        }
        if let runner = mirrors.first(where: { $0.spec.name == request.region }) {
            if request.role == "primary" { return refuse("region '\(request.region)' is a replica here, not a primary") }
            switch runner.mirror {
            case nil:
                return refuse("region '\(request.region)' is not ready yet (its mirror has not reached the primary)")
            case .eager(let m)?:
                let r = m.region
                if process.userfaultfd != nil {
                    return refuse("region '\(request.region)' is an eager replica: map and read it, no descriptor is needed")
                }
                var answer = AttachAnswer(region: r.name, role: "replica", lazy: false, path: r.mappablePath,
                                          size: r.geometry.size, chunkSize: r.geometry.chunkSize, attached: false)
                answer.synced = runner.synced
                return .accepted(answer, detach: nil)
            case .lazy(let m)?:
                let outcome = Self.attach(request, from: process, toLazy: m, logger: logger)
                guard case .accepted(var answer, let detach) = outcome else { return outcome }
                answer.synced = runner.synced
                return .accepted(answer, detach: detach)
            }
        }
        if let export = exports.export(named: request.region) {
            if request.role == "replica" { return refuse("region '\(request.region)' is a primary here, not a replica") }
            let r = export.region
            return Self.attach(request, from: process, toPrimary: r, logger: logger)
        }
        return refuse("no region named '\(request.region)' on this peer")
    }

    /// `attach` to a lazy replica: a one-shot lookup without a descriptor,
    /// else the process's faults are served from now on.
    static func attach(_ request: AttachRequest, from process: AttachingProcess, toLazy mirror: PostCopyMirror,
                       logger: Logger) -> AttachOutcome {
        let r = mirror.region
        var answer = AttachAnswer(region: r.name, role: "replica", lazy: true, path: r.mappablePath,
                                  size: r.geometry.size, chunkSize: r.geometry.chunkSize, attached: false)
        guard let fd = process.userfaultfd else { return .accepted(answer, detach: nil) }
        let mapping: AttachMapping
        do {
            mapping = try AttachMapping(base: request.base, length: request.length, regionSize: r.geometry.size)
        } catch {
            return .refused("\(error)")
        }
        guard isUserfaultfd(fd) else { return .refused("the descriptor passed is not a userfaultfd") }
        do {
            let detach = try mirror.attachClient(userfaultfd: fd, base: mapping.base, length: mapping.length,
                                                 end: process.endSession)
            answer.attached = true
            logger.info("process attached", metadata: ["region": "\(r.name)", "pid": "\(process.pid)", "role": "lazy replica"])
            return .accepted(answer, detach: detach)
        } catch {
            return .refused("\(error)")
        }
    }

    /// `attach` to a primary: a one-shot lookup without a descriptor; with
    /// one, the process registered its mapping for WP_ASYNC
    /// write-protection and the region's change feed scans its
    /// /proc/PID/pagemap from now on (see `RegionChangeFeed.attachWriter`).
    static func attach(_ request: AttachRequest, from process: AttachingProcess, toPrimary r: Region,
                       logger: Logger) -> AttachOutcome {
        var answer = AttachAnswer(region: r.name, role: "primary", lazy: false, path: r.mappablePath, size: r.geometry.size,
                                  chunkSize: r.geometry.chunkSize, attached: false)
        guard let fd = process.userfaultfd else { return .accepted(answer, detach: nil) }
        // Checked before any descriptor is opened or duplicated: a refusal
        // leaves nothing behind.
        let mapping: AttachMapping
        do {
            mapping = try AttachMapping(base: request.base, length: request.length, regionSize: r.geometry.size)
        } catch {
            return .refused("\(error)")
        }
        guard isUserfaultfd(fd) else { return .refused("the descriptor passed is not a userfaultfd") }
        let pagemap = open("/proc/\(process.pid)/pagemap", O_RDONLY | O_CLOEXEC)
        guard pagemap >= 0 else { return .refused("cannot open /proc/\(process.pid)/pagemap: \(Errno(rawValue: errno))") }
        let own = dup(fd)
        guard own >= 0 else {
            close(pagemap)
            return .refused("dup: \(Errno(rawValue: errno))")
        }
        do {
            // Owns `own` and `pagemap` from here, whether it throws or not.
            let tracker = try WriteProtectTracker(attachedProcessFD: own, pagemap: pagemap, base: mapping.base,
                                                  length: r.geometry.size, chunkSize: r.geometry.chunkSize)
            let id = try RegionChangeFeed.attachWriter(tracker, to: r)
            close(fd)
            answer.attached = true
            switch r.backing {
            case .file:
                answer.tracking = "this process's stores through its mapping are tracked exactly; the region is file-backed, "
                    + "so the hash scanner keeps covering writers that did not attach"
            case .memory:
                answer.tracking = "this process's stores through its mapping are tracked exactly (PAGEMAP_SCAN on its pagemap)"
            }
            logger.info("process attached", metadata: ["region": "\(r.name)", "pid": "\(process.pid)", "role": "primary writer"])
            return .accepted(answer, detach: { RegionChangeFeed.detachWriter(id, from: r) })
        } catch {
            return .refused("cannot track the process's writes: \(error)")
        }
    }

    /// `text` with line breaks and other control characters escaped (`\n`,
    /// `\u{1B}`), so a reason quoting a client's input stays one line.
    static func oneLine(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.properties.generalCategory == .control
                || scalar.properties.generalCategory == .lineSeparator
                || scalar.properties.generalCategory == .paragraphSeparator:
                out += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Whether `fd` is a userfaultfd (an anonymous inode of that name).
    static func isUserfaultfd(_ fd: Int32) -> Bool {
        var target = [CChar](repeating: 0, count: 64)
        let n = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        guard n > 0 else { return false }
        return String(decoding: target[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[userfaultfd]"
    }

    /// Answers a control-socket request.
    public func handle(_ request: ControlRequest) async -> ControlResponse {
        switch request.command {
        case ControlRequest.status.command:
            return .status(await statusReport())
        case ControlRequest.stats.command:
            return .stats(await statsReport())
        case "migrate":
            guard let migration = request.migration else { return .error("migrate needs a migration (region, destination ...)") }
            do {
                return .migrate(try await migrate(migration))
            } catch {
                return .error(Self.oneLine("\(error)"))
            }
        case "verify":
            guard let name = request.region else { return .error("verify needs a region") }
            guard let runner = mirrors.first(where: { $0.spec.name == name }) else {
                if exports.export(named: name) != nil {
                    return .error("region '\(name)' is a primary here: run verify on the peer that mirrors it")
                }
                return .error(Self.oneLine("no region named '\(name)' on this peer"))
            }
            do {
                return .verify(try await runner.verify())
            } catch {
                return .error("cannot verify '\(name)': \(error)")
            }
        default:
            return .error("unknown command '\(request.command)' (this peer knows: status, stats, verify, migrate)")
        }
    }
}
