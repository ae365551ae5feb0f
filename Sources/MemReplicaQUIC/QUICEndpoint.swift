import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import DequeModule
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// One UDP socket and the one thread that owns it and every QUIC connection
/// on it. Other threads never touch ngtcp2: they post closures to the
/// loop's command queue and wake it through an eventfd, as ngtcp2's own
/// examples do.
///
/// An endpoint can connect out and, with `acceptsConnections`, accept in.
public final class QUICEndpoint: Transport, CommandLoop, @unchecked Sendable {
    public let configuration: QUICConfiguration
    package let logger: Logger
    let tls: TLSContext
    /// Our certificate's identity, as peers will see it.
    public var localIdentity: PeerIdentity { tls.localIdentity }
    /// The bound socket's address, for peers and for ngtcp2's paths.
    public let localAddress: PeerAddress
    let localStorage: SocketAddressStorage
    /// Stateless reset tokens for our connection IDs derive from it
    /// (`QUICConfiguration.statelessResetKey`).
    let statelessResetSecret: [UInt8]
    /// Keys Retry tokens (`ngtcp2_crypto_generate_retry_token`); random per
    /// endpoint and never stored, so tokens die with the process.
    let retryTokenSecret: [UInt8]

    let socket: UDPSocket
    let poller: Poller
    static let socketToken: UInt64 = 1
    /// Commands, live connections, accept and stop (shared with TCP).
    let loop: EndpointLoop<QUICConnectionCore>
    /// Other threads reach the loop through it (`post`, `onLoop`).
    package var commands: EventLoopCommandQueue { loop.commands }

    // Loop-confined state.
    var routes: [ConnectionID: QUICConnectionCore] = [:]
    var liveConnections: Dictionary<ObjectIdentifier, QUICConnectionCore>.Values { loop.live.values }
    /// Bounds the stateless resets we send (QUICEndpoint+StatelessReset).
    var statelessResetLimiter = StatelessResetLimiter()
    private var writeQueue = Deque<QUICConnectionCore>()
    /// Streams whose readers get the bytes of this receive batch at its end.
    private var readersToWake: [QUICStreamCore] = []
    private lazy var busyPollNanoseconds: UInt64? = configuration.busyPoll.map(\.saturatingNanoseconds)
    private lazy var requestPollNanoseconds: UInt64? = configuration.requestPollWindow.map(\.saturatingNanoseconds)
    /// Until when the loop polls instead of sleeping, asked for by
    /// `keepPollingForRequests` (0: not asked).
    private var pollUntil: UInt64 = 0
    /// The same for answers this side awaits (`pollForAnswers`), ended
    /// early once they came (`answersArrived`): an endpoint both serves and
    /// mirrors, and one role's end must not cut the other's window.
    private var answerPollUntil: UInt64 = 0
    /// Descriptors other than the socket that the loop watches
    /// (`watchOnLoop`), by token; a handler returning false is dropped.
    private var watchers: [UInt64: (fd: Int32, handler: () -> Bool)] = [:]
    private var nextWatchToken: UInt64 = socketToken + 1
    /// Inbound connections by source host, and the caps on them.
    var admission: ConnectionAdmission
    /// When the loop next looks for stalled streams.
    private var nextStallSweep: UInt64 = 0
    private let stallTimeout: UInt64
    /// Tickets from servers we connected to, for the next `connect`.
    private var sessionTickets = SessionTicketCache()
    /// Application protocols served next to memreplica's, by ALPN (`serve`).
    var applications: [String: any QUICApplication] = [:]
    /// Bytes the kernel would not take yet (EAGAIN); everything waits on them.
    var pendingSend: (bytes: [UInt8], segment: Int, to: SocketAddressStorage)?
    package let transmitBuffer: UnsafeMutableRawBufferPointer
    let vectorScratch: UnsafeMutableBufferPointer<ngtcp2_vec>
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    /// Retry packets sent (address validation under handshake load).
    var retriesSent = 0
    /// Half-open or established connections allowed at once (a flood of
    /// Initials must not exhaust memory).
    public static let maxConnections = 1024

    /// Binds `address` and starts the loop thread.
    public init(bind address: PeerAddress, tls tlsConfiguration: TLSConfiguration,
                configuration: QUICConfiguration, logger: Logger = Logger(label: "memreplica.quic")) throws {
        self.configuration = configuration.clampedToBudget()
        self.logger = logger
        admission = ConnectionAdmission(limits: configuration.peerLimits)
        stallTimeout = configuration.peerLimits.stalledStreamTimeout.saturatingNanoseconds
        tls = try TLSContext(tlsConfiguration, replayWindow: configuration.earlyDataReplayWindow)
        socket = try UDPSocket(bindTo: address, bufferSize: configuration.socketBufferSize,
                               namespace: configuration.networkNamespace)
        localAddress = socket.localAddress
        localStorage = socket.boundStorage
        statelessResetSecret = (configuration.statelessResetKey ?? .random()).bytes
        var retrySecret = [UInt8](repeating: 0, count: 32)
        retrySecret.withUnsafeMutableBytes { fillRandom($0.baseAddress!, 32) }
        retryTokenSecret = retrySecret
        poller = try TransportError.mappingSystemErrors { try Poller() }
        try poller.add(socket.fd.rawValue, token: Self.socketToken, events: EPOLLIN.rawValue)
        loop = EndpointLoop(waking: poller)
        transmitBuffer = .allocate(byteCount: max(configuration.maxDatagramsPerSend, 1) * 65536, alignment: 16)
        vectorScratch = .allocate(capacity: 16)
        receiveBuffer = .allocate(byteCount: 65536, alignment: 16)
        logger.debug("QUIC endpoint bound", metadata: [
            "address": "\(localAddress)", "gro": "\(socket.groEnabled)", "dual-stack": "\(socket.isDualStack)",
        ])
        // The thread keeps the endpoint alive until `close()` ends the loop.
        loop.startThread(named: "quic-loop \(localAddress)") { self.run() }
    }

    deinit {
        transmitBuffer.deallocate()
        vectorScratch.deallocate()
        receiveBuffer.deallocate()
    }

    // MARK: Transport

    /// What this endpoint's streams hold counts against this budget.
    public var memoryBudget: MemoryBudget { configuration.memoryBudget }

    public func connect(to address: PeerAddress) async throws -> any TransportConnection {
        try await connectQUIC(to: address)
    }

    /// Connects with mutual TLS. When an earlier connection to the same
    /// address left a session ticket, the session is resumed: no
    /// certificates cross the wire and `connect` returns once our side of
    /// the handshake completes, a round trip sooner. No data is sent early.
    public func connectQUIC(to address: PeerAddress) async throws -> QUICConnection {
        QUICConnection(core: try await connectCore(to: address, earlyData: nil))
    }

    /// Connects and sends `replaySafeEarlyData` first on the connection's
    /// first bidirectional stream, which is returned (still open) with it.
    ///
    /// With a cached session ticket for this address the bytes go in 0-RTT,
    /// in the very first flight; otherwise (or if the server refuses 0-RTT,
    /// which is handled here: they are sent again) right after the
    /// handshake. **0-RTT data can be replayed** by anyone who recorded the
    /// flight (RFC 8446 §8, RFC 9001 §9.2): pass only a request whose effect
    /// is the same when run twice or more, such as a read. Never a write.
    public func connectQUIC(to address: PeerAddress, replaySafeEarlyData: [UInt8]) async throws
        -> (connection: QUICConnection, stream: QUICStream) {
        precondition(!replaySafeEarlyData.isEmpty, "early data must not be empty")
        let core = try await connectCore(to: address, earlyData: replaySafeEarlyData)
        let connection = QUICConnection(core: core)
        guard let stream = await onLoop({ core.earlyStream }) else {
            // Closed meanwhile, or the server allows no stream at all.
            let error = core.closeErrorSnapshot ?? .protocolFailure("the server allows no stream for the first request")
            await connection.close(errorCode: 0, reason: "no stream for the first request")
            throw error
        }
        return (connection, QUICStream(core: stream))
    }

    private func connectCore(to address: PeerAddress, earlyData: [UInt8]?) async throws -> QUICConnectionCore {
        if address.isWildcard {
            throw TransportError.badAddress(input: address.description, reason: "a peer address needs a host")
        }
        return try await Delivery<QUICConnectionCore>.wait { d in
            post { [self] in
                guard !loop.stopping else { d.fail(TransportError.closedLocally); return }
                do {
                    let remote = socket.normalized(address.storage)
                    let ticket = sessionTickets.take(for: Self.ticketKey(remote))
                    let core = try QUICConnectionCore.client(endpoint: self, remote: remote, ticket: ticket,
                                                             earlyData: earlyData)
                    core.connectWaiter = d
                    register(core)
                    needsWrite(core)
                } catch {
                    d.fail(error)
                }
            }
        }
    }

    /// Tickets are kept per server address (the TLS configuration, and so
    /// the ALPN and our certificate, is the endpoint's own).
    private static func ticketKey(_ remote: SocketAddressStorage) -> String {
        PeerAddress(storage: remote).description
    }

    /// Called on the loop as a client connection receives a ticket.
    func storeTicket(_ ticket: SessionTicket, for core: QUICConnectionCore) {
        sessionTickets.store(ticket, for: Self.ticketKey(core.remote))
    }

    /// Forgets every session ticket: the next connects do full handshakes
    /// (the benchmark compares the two).
    package func discardSessionTickets() async {
        await onLoop { [self] in sessionTickets = SessionTicketCache() }
    }

    /// Session tickets held for `address` (tests wait on this).
    package func sessionTicketCount(for address: PeerAddress) async -> Int {
        await onLoop { [self] in sessionTickets.count(for: Self.ticketKey(socket.normalized(address.storage))) }
    }

    /// Identities and RTTs of every established connection.
    public func connectionSummaries() async -> [ConnectionSummary] {
        await loop.summaries()
    }

    public func accept() async -> (any TransportConnection)? {
        await acceptQUIC()
    }

    public func acceptQUIC() async -> QUICConnection? {
        await loop.accept().map { QUICConnection(core: $0) }
    }

    public func close() async {
        await loop.stop { [loop] in
            let now = monotonicNanoseconds()
            for core in Array(loop.live.values) {
                core.closeByApplication(errorCode: 0, reason: "endpoint closing", now: now)
            }
        }
    }

    // MARK: loop

    private func run() {
        while true {
            loop.commands.runPending()
            if loop.stopping && loop.live.isEmpty { break }
            var deadline = writeQueue.isEmpty && pendingSend == nil ? nextDeadline() : 0
            let now = monotonicNanoseconds()
            let spin = max(busyPollNanoseconds ?? 0, pollUntil > now ? pollUntil - now : 0,
                           answerPollUntil > now ? answerPollUntil - now : 0)
            if deadline > now, spin > 0 {
                // Poll a little before sleeping: a wake-up from epoll costs
                // tens of µs on a VM, more than a reply usually takes, and
                // a sleeping loop's idle vCPU takes as long again to run
                // the thread a page install wakes. A timer due within the
                // window (an ACK delay, pacing) ends the poll, not skips it.
                if poller.poll(forNanoseconds: min(spin, deadline - now)) { deadline = 0 }
            }
            poller.wait(until: deadline) { token, events in
                if token == Self.socketToken {
                    if events & EPOLLOUT.rawValue != 0 { flushPendingSend() }
                    if events & EPOLLIN.rawValue != 0 { readSocket() }
                } else if let watcher = watchers[token], !watcher.handler() {
                    unwatchOnLoop(token)
                }
            }
            loop.commands.runPending()
            handleExpiries()
            // What a watched descriptor got while this turn read the socket
            // (a busy one takes a while) still goes out in this turn's
            // writes, rather than after the next wait: a handler reads
            // until empty, so this costs one read when nothing came.
            if !watchers.isEmpty { serveWatchers() }
            writeAll()
        }
        loop.exit {
            routes.removeAll()
            writeQueue.removeAll()
            readersToWake.removeAll()
            watchers.removeAll()
        }
        // The port is free by the time `close()` returns.
        socket.close()
        loop.resumeStopWaiters()
    }

    /// Called on the loop as a request or answer goes out whose follow-up
    /// comes within µs (`TransportEventLoop`): the loop polls instead of
    /// sleeping for `QUICConfiguration.requestPollWindow` from now.
    /// Bounded, unlike `busyPoll`, to the moments such exchanges run.
    package func keepPollingForRequests() {
        guard let window = requestPollNanoseconds else { return }
        pollUntil = max(pollUntil, monotonicNanoseconds() + window)
    }

    package func pollForAnswers() {
        guard let window = requestPollNanoseconds else { return }
        answerPollUntil = max(answerPollUntil, monotonicNanoseconds() + window)
    }

    package func answersArrived() {
        answerPollUntil = 0
    }

    /// On the loop: calls `handler` on the loop whenever `fd` is readable
    /// (level-triggered, so it must read until empty), so that what it
    /// reads can be answered in the same turn, with no thread of its own
    /// woken and no hand-off. A lazy replica's userfaultfd is watched this
    /// way. `handler` returns false to stop being called. The caller keeps
    /// `fd` open until `unwatchOnLoop`, or knows the kernel dropped it from
    /// the epoll set by closing it. Returns the token for `unwatchOnLoop`.
    package func watchOnLoop(_ fd: Int32, handler: @escaping () -> Bool) throws -> UInt64 {
        let token = nextWatchToken
        nextWatchToken += 1
        try poller.add(fd, token: token, events: EPOLLIN.rawValue)
        watchers[token] = (fd, handler)
        return token
    }

    /// How many received bytes the loop handles before it serves watched
    /// descriptors (faults) and writes again within one `readSocket`.
    static let bytesBetweenWatcherTurns = 256 << 10

    private func serveWatchers() {
        for (token, watcher) in watchers where !watcher.handler() { unwatchOnLoop(token) }
    }

    /// On the loop: stops watching (nothing if already stopped).
    package func unwatchOnLoop(_ token: UInt64) {
        guard let watcher = watchers.removeValue(forKey: token) else { return }
        poller.remove(watcher.fd)
    }

    func wakeLater(_ stream: QUICStreamCore) {
        readersToWake.append(stream)
    }

    private func readSocket() {
        defer {
            let streams = readersToWake
            readersToWake.removeAll(keepingCapacity: true)
            for s in streams { s.wakeReader() }
        }
        // Bounded so a flood cannot starve writes and timers.
        var sinceServed = 0
        for _ in 0..<64 {
            let result: (count: Int, segmentSize: Int, from: SocketAddressStorage)?
            do {
                result = try socket.receive(into: receiveBuffer)
            } catch {
                logger.warning("receive failed: \(error)")
                return
            }
            guard let (count, segment, from) = result else { return }
            let now = monotonicNanoseconds()
            let step = segment > 0 ? segment : count
            var offset = 0
            while offset < count {
                let len = min(step, count - offset)
                handleDatagram(UnsafeRawBufferPointer(rebasing: receiveBuffer[offset..<offset + len]), from: from, now: now)
                offset += len
            }
            wakeLoopReaders()
            sinceServed += count
            // A fault read while bulk floods in goes out now, not after
            // up to 64 receives (4 MiB: milliseconds on a busy core).
            if sinceServed >= Self.bytesBetweenWatcherTurns, !watchers.isEmpty {
                sinceServed = 0
                serveWatchers()
                writeAll()
            }
        }
    }

    /// Streams read on the loop (fault reads) take what arrived before the
    /// next receive, not after the batch: the next receive is usually an
    /// empty one, and a faulting thread would wait through it.
    private func wakeLoopReaders() {
        guard readersToWake.contains(where: \.readsOnLoop) else { return }
        let now = readersToWake.filter(\.readsOnLoop)
        readersToWake.removeAll(where: \.readsOnLoop)
        for s in now { s.wakeReader() }
    }

    /// Resets every stream whose peer stopped taking its bytes.
    private func sweepStalledStreams(now: UInt64) {
        for core in Array(loop.live.values) where !core.isClosed {
            core.resetStalledStreams(now: now, after: stallTimeout)
        }
    }

    private var stallSweepInterval: UInt64 { min(max(stallTimeout / 4, 10_000_000), 1_000_000_000) }

    private func handleExpiries() {
        let now = monotonicNanoseconds()
        if now >= nextStallSweep {
            nextStallSweep = now + stallSweepInterval
            sweepStalledStreams(now: now)
        }
        for core in Array(loop.live.values) where !core.isClosed {
            if core.handshakeDeadline <= now {
                core.handleFatal(NGTCP2_ERR_HANDSHAKE_TIMEOUT, now: now)
                continue
            }
            let expiry = ngtcp2_conn_get_expiry(core.conn)
            guard expiry <= now else { continue }
            let rc = ngtcp2_conn_handle_expiry(core.conn, now)
            if rc != 0 {
                core.handleFatal(rc, now: now)
            } else {
                needsWrite(core)
            }
        }
    }

    private func writeAll() {
        var rounds = writeQueue.count
        while rounds > 0, pendingSend == nil, let core = writeQueue.popFirst() {
            rounds -= 1
            core.wantsWrite = false
            switch core.writePackets(now: monotonicNanoseconds()) {
            case .more, .blocked: needsWrite(core)
            case .idle: break
            }
        }
    }

    /// When the loop must next wake for ngtcp2 (retransmission, ACK delay,
    /// pacing, idle and handshake timeouts).
    private func nextDeadline() -> UInt64 {
        var earliest = UInt64.max
        for core in loop.live.values where !core.isClosed {
            earliest = min(earliest, ngtcp2_conn_get_expiry(core.conn), core.handshakeDeadline)
        }
        if !loop.live.isEmpty { earliest = min(earliest, nextStallSweep) }
        return earliest
    }

    // MARK: helpers for connections (loop thread)

    package func needsWrite(_ core: QUICConnectionCore) {
        guard !core.wantsWrite, !core.isClosed else { return }
        core.wantsWrite = true
        writeQueue.append(core)
    }

    func register(_ core: QUICConnectionCore) {
        loop.live[ObjectIdentifier(core)] = core
        for id in core.routedIDs { routes[id] = core }
    }

    func route(_ id: ConnectionID, to core: QUICConnectionCore) {
        core.routedIDs.insert(id)
        routes[id] = core
    }

    func unroute(_ id: ConnectionID, from core: QUICConnectionCore) {
        core.routedIDs.remove(id)
        if routes[id] === core { routes[id] = nil }
    }

    /// Called by a connection as it finishes.
    func forget(_ core: QUICConnectionCore) {
        serverHandshakeEnded(core)
        if let host = core.admittedHost {
            core.admittedHost = nil
            admission.closed(host: host)
        }
        for id in core.routedIDs where routes[id] === core { routes[id] = nil }
        loop.live[ObjectIdentifier(core)] = nil
        if let i = writeQueue.firstIndex(where: { $0 === core }) { writeQueue.remove(at: i) }
        core.wantsWrite = false
    }

    func connectionEstablished(_ core: QUICConnectionCore) {
        var metadata: Logger.Metadata = ["peer": "\(core.remoteAddress)", "identity": "\(core.peerIdentity)"]
        if core.sessionResumed { metadata["resumed"] = "\(core.earlyDataOutcome == .accepted ? "0-RTT" : "1-RTT")" }
        logger.info("peer connected", metadata: metadata)
        loop.established(core)
    }

}
