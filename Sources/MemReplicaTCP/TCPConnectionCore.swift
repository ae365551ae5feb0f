import MemReplicaSystem
import MemReplicaTransportCore
import COpenSSL
import DequeModule

/// One logical connection of the TCP transport: its streams, flow-control
/// credit and TCP connections ("links"). Confined to the endpoint's loop
/// thread; `TCPConnection` is the handle other threads hold.
///
/// The first link (the session link) carries the SETTINGS exchange,
/// connection-level records and, in `tcp` mode, every stream. In
/// `tcp-per-region` mode each stream the client opens gets a link of its
/// own that joins this connection by its token (see `MuxSettings`).
final class TCPConnectionCore: StreamConnectionCore, @unchecked Sendable {
    enum State { case handshaking, established, closed(TransportError) }

    let endpoint: TCPEndpoint
    /// What its streams share across threads: send share, credit, close reason.
    let shared: ConnectionSharedState
    let isClient: Bool
    package let remoteAddress: PeerAddress
    var state = State.handshaking
    package var peerIdentity = PeerIdentity.none
    /// Names this connection to links that join it (server-made, random).
    var token: [UInt8] = []
    private(set) var sessionLink: TCPLink!
    private(set) var links: [TCPLink] = []
    var streams: [Int64: TCPStreamCore] = [:]

    var waiters = ConnectionWaiters<TCPStreamCore>()
    var connectWaiter: Delivery<TCPConnectionCore>?

    // Stream IDs as QUIC numbers bidirectional streams: client 4n, server 4n+1.
    private var nextLocalStreamID: Int64
    private var nextPeerStreamID: Int64
    private var localStreamsOpened: UInt64 = 0
    var localStreamLimit: UInt64 = 0
    private var peerStreamsOpened: UInt64 = 0
    private var peerStreamLimit: UInt64

    // Flow control, connection level.
    private var peerStreamWindow: UInt64 = 0
    var connectionSendLimit: UInt64 = 0
    private(set) var connectionSent: UInt64 = 0
    /// Connection credit bulk streams leave to urgent ones.
    private(set) var urgentCreditReserve = 0
    var connectionReceiveLimit: UInt64
    var connectionReceived: UInt64 = 0
    var waitingForCredit: [TCPStreamCore] = []

    // Liveness.
    var lastReceivedAt: UInt64
    private var lastPingAt: UInt64
    private var pingSequence: UInt64 = 0
    let startedAt = monotonicNanoseconds()
    var handshakeDuration: Duration?
    /// Kernel counters of links that are gone, so statistics keep them.
    private var retired = TCPInfo()
    /// The newest TLS session ticket (client), for links that join later.
    private var resumption: OpaquePointer?

    var closeErrorSnapshot: TransportError? { shared.closeErrorSnapshot }
    var isClosed: Bool { if case .closed = state { return true } else { return false } }
    var closeError: TransportError? { if case .closed(let e) = state { return e } else { return nil } }
    var isEstablished: Bool { if case .established = state { return true } else { return false } }

    /// The receive window reserved in the memory budget for this
    /// connection's life (everything the peer may send before we read),
    /// and each stream's share of it.
    let receiveWindow: UInt64
    /// Bounds what this connection's frame readers hold: its receive window.
    let frameAllowance: FrameAllowance
    let streamReceiveWindow: UInt64
    private var receiveWindowHeld = true

    /// `receiveWindow` comes from `MemoryBudget.reserveReceiveWindow`; the
    /// connection gives it back when it finishes.
    init(endpoint: TCPEndpoint, isClient: Bool, remoteAddress: PeerAddress, receiveWindow: UInt64) {
        shared = ConnectionSharedState(budget: endpoint.memoryBudget, receiveWindow: receiveWindow)
        self.endpoint = endpoint
        self.isClient = isClient
        self.remoteAddress = remoteAddress
        self.receiveWindow = receiveWindow
        frameAllowance = FrameAllowance(limit: Int(receiveWindow), budget: endpoint.memoryBudget)
        let config = endpoint.configuration
        streamReceiveWindow = min(config.streamReceiveWindow, receiveWindow)
        nextLocalStreamID = isClient ? 0 : 1
        nextPeerStreamID = isClient ? 1 : 0
        peerStreamLimit = config.maxConcurrentStreams
        connectionReceiveLimit = receiveWindow
        lastReceivedAt = startedAt
        lastPingAt = startedAt
    }

    deinit {
        if let resumption { SSL_SESSION_free(resumption) }
        if receiveWindowHeld { endpoint.memoryBudget.releaseReceiveWindow(receiveWindow) }
    }

    func attach(_ link: TCPLink) {
        if sessionLink == nil { sessionLink = link }
        links.append(link)
    }

    func detach(_ link: TCPLink) {
        if let info = link.finalInfo {
            retired.bytesSent += info.bytesSent
            retired.bytesReceived += info.bytesReceived
            retired.segmentsOut += info.segmentsOut
            retired.segmentsIn += info.segmentsIn
        }
        links.removeAll { $0 === link }
    }

    /// Our half of SETTINGS: what the peer may send us.
    func localSettings(role: MuxSettings.Role = .connection, token: [UInt8] = [], joinStream: Int64? = nil) -> MuxSettings {
        let config = endpoint.configuration
        return MuxSettings(role: role, streamWindow: streamReceiveWindow, connectionWindow: receiveWindow,
                           maxStreams: config.maxConcurrentStreams, token: token, joinStream: joinStream)
    }

    /// The peer's SETTINGS: what we may send it.
    func apply(_ settings: MuxSettings) {
        peerStreamWindow = settings.streamWindow
        connectionSendLimit = settings.connectionWindow
        urgentCreditReserve = Int(SendScheduler<TCPStreamCore>.urgentCreditReserve(peerWindow: settings.connectionWindow))
        localStreamLimit = settings.maxStreams
    }

    /// Client: the server's SETTINGS arrived on the session link, so it
    /// accepted our certificate; only now does `connect` return.
    func serverSettingsArrived(_ settings: MuxSettings) throws {
        guard settings.role == .connection, settings.token.count == MuxLimits.tokenLength else {
            throw MuxViolation("the server's SETTINGS must start a connection and carry a token")
        }
        token = settings.token
        apply(settings)
        state = .established
        handshakeDuration = .nanoseconds(Int64(monotonicNanoseconds() - startedAt))
        connectWaiter?.succeed(self)
        connectWaiter = nil
    }

    /// Server: the connection is accepted.
    func established() {
        state = .established
        handshakeDuration = .nanoseconds(Int64(monotonicNanoseconds() - startedAt))
    }

    // MARK: streams

    func openStreamNow() throws -> TCPStreamCore? {
        guard localStreamsOpened < localStreamLimit else { return nil }
        let id = nextLocalStreamID
        let link: TCPLink
        if isClient && endpoint.configuration.connectionPerStream {
            link = try endpoint.openJoinLink(for: self, stream: id)
        } else {
            link = sessionLink
        }
        nextLocalStreamID += 4
        localStreamsOpened += 1
        let stream = TCPStreamCore(id: id, connection: self, link: link, sendCredit: peerStreamWindow)
        streams[id] = stream
        return stream
    }

    /// A stream the peer opened (its first record, or a joining link).
    @discardableResult
    func openPeerStream(_ id: Int64, on link: TCPLink) throws -> TCPStreamCore {
        guard peerStreamsOpened < peerStreamLimit else {
            throw MuxViolation(.streamLimit, "stream \(id) exceeds the \(peerStreamLimit) streams granted")
        }
        peerStreamsOpened += 1
        let stream = TCPStreamCore(id: id, connection: self, link: link, sendCredit: peerStreamWindow)
        streams[id] = stream
        waiters.peerOpened(stream)
        return stream
    }

    private func isPeerInitiated(_ id: Int64) -> Bool { (id & 1 == 1) == isClient }

    /// The stream a stream-level record on `link` is for; nil when the
    /// record concerns a stream that is over and may be ignored.
    func stream(_ id: Int64, for type: MuxRecordType, on link: TCPLink) throws -> TCPStreamCore? {
        if let s = streams[id] {
            guard s.link === link else { throw MuxViolation("stream \(id) records arrived on another TCP connection") }
            return s
        }
        guard id & 2 == 0 else { throw MuxViolation("stream \(id) is not a bidirectional stream") }
        if isPeerInitiated(id) {
            if id >= nextPeerStreamID {
                guard link === sessionLink else { throw MuxViolation("stream \(id) of a joining TCP connection was never opened") }
                guard type != .streamWindow else { throw MuxViolation("WINDOW for stream \(id), which was never opened") }
                // As in QUIC, a stream opens every lower one the peer has not
                // used yet (streams opened together may speak in any order);
                // the stream limit bounds how many.
                var opened: TCPStreamCore?
                while nextPeerStreamID <= id {
                    opened = try openPeerStream(nextPeerStreamID, on: link)
                    nextPeerStreamID += 4
                }
                return opened
            }
        } else if id >= nextLocalStreamID {
            throw MuxViolation("\(type) for stream \(id), which this side never opened")
        }
        // A stream that is over: late credit or stop requests are harmless.
        switch type {
        case .streamWindow, .stopSending, .reset: return nil
        default: throw MuxViolation("\(type) for stream \(id), which has ended")
        }
    }

    /// Both directions are done: forget the stream and give credit back.
    func streamMayBeDone(_ stream: TCPStreamCore) {
        guard stream.sendDone, stream.receiveDone, !stream.removed else { return }
        stream.removed = true
        streams[stream.id] = nil
        // Credit readers took and no sweep reported yet: the sweep only
        // visits streams still here, so hand it back now and on every read.
        stream.mailbox.withLock { $0.forgotten = true }
        stream.returnCredit()
        if isPeerInitiated(stream.id) && !isClosed {
            peerStreamLimit += 1
            sessionLink.queueControl(.streamCredit, value: 1)
        }
        if stream.link !== sessionLink {
            // Its own TCP connection has nothing more to carry.
            stream.link.beginDrain(closing: nil)
        }
    }

    /// The peer raised our stream limit: serve waiting openers.
    func serveOpenWaiters() {
        while !waiters.openWaiters.isEmpty {
            do {
                guard let stream = try openStreamNow() else { return }
                waiters.openWaiters.removeFirst().succeed(stream)
            } catch {
                waiters.openWaiters.removeFirst().fail(error)
            }
        }
    }

    // MARK: credit

    /// Connection credit left for DATA now.
    var connectionCreditLeft: Int { Int(clamping: connectionSendLimit - min(connectionSendLimit, connectionSent)) }

    /// Connection credit `stream` may use now: all of it for an urgent
    /// stream; for a bulk one what is left beyond the urgent streams'
    /// reserve (`SendScheduler.urgentCreditReserve`).
    func creditLeft(for stream: TCPStreamCore) -> Int {
        stream.urgent ? connectionCreditLeft : max(0, connectionCreditLeft - urgentCreditReserve)
    }

    func sent(_ count: Int) { connectionSent += UInt64(count) }

    func waitForCredit(_ stream: TCPStreamCore) {
        guard !stream.waitingForConnectionCredit else { return }
        stream.waitingForConnectionCredit = true
        waitingForCredit.append(stream)
    }

    func postToLoop(_ body: @escaping @Sendable () -> Void) { endpoint.post(body) }

    /// Returns every stream's outstanding credit (loop thread).
    func returnAllCredit() {
        shared.creditSweepStarted()
        for s in streams.values { s.returnCredit() }
    }

    /// `count` received bytes are gone from our buffers: open the
    /// connection window by as much.
    func consumed(_ count: Int) {
        guard count > 0 else { return }
        shared.creditReturned(count)
        guard !isClosed else { return }
        connectionReceiveLimit += UInt64(count)
        sessionLink.queueControl(.connectionWindow, value: UInt64(count))
    }

    /// Connection credit for received bytes nobody will read (a stream
    /// this side reset or stopped reading); unlike `consumed`, no reader
    /// counted them as taken.
    func returnDiscarded(_ count: Int) {
        guard count > 0, !isClosed else { return }
        connectionReceiveLimit += UInt64(count)
        sessionLink.queueControl(.connectionWindow, value: UInt64(count))
    }

    // MARK: liveness and resumption

    /// When `tick` next looks for stalled streams.
    private var nextStallCheck: UInt64 = 0
    /// When a stream last handed bytes to TLS on this connection.
    var lastSendProgress = monotonicNanoseconds()

    /// Resets the streams whose peer took none of their bytes for the
    /// endpoint's `stalledStreamTimeout`; returns when to look again.
    private func resetStalledStreams(now: UInt64) -> UInt64 {
        let timeout = endpoint.configuration.peerLimits.stalledStreamTimeout
        let nanoseconds = timeout.saturatingNanoseconds
        if now >= nextStallCheck {
            nextStallCheck = now + min(max(nanoseconds / 4, 10_000_000), 1_000_000_000)
            for stream in Array(streams.values) where stream.isStalled(now: now, after: nanoseconds) {
                endpoint.logger.info("resetting a stream whose peer stopped reading",
                                     metadata: ["peer": "\(remoteAddress)", "stream": "\(stream.id)"])
                stream.resetForStall(seconds: timeout.seconds)
                endpoint.memoryBudget.noteStalledStreamReset()
            }
        }
        return nextStallCheck
    }

    /// Sends keep-alives and ends an idle connection; returns when it next
    /// needs the loop.
    func tick(now: UInt64) -> UInt64 {
        guard isEstablished else { return UInt64.max }
        let config = endpoint.configuration
        let idle = config.livenessTimeout.saturatingNanoseconds
        if now >= lastReceivedAt + idle {
            finish(.idleTimeout(seconds: config.livenessTimeout.seconds))
            return UInt64.max
        }
        var next = min(lastReceivedAt + idle, resetStalledStreams(now: now))
        guard !isClosed else { return UInt64.max }
        if let keepAlive = config.keepAliveInterval {
            // Slower than the idle timeout would keep nothing alive.
            let interval = min(keepAlive, config.livenessTimeout / 2).saturatingNanoseconds
            if now >= lastPingAt + interval {
                lastPingAt = now
                pingSequence += 1
                sessionLink.queueControl(.ping, payload: withUnsafeBytes(of: pingSequence.bigEndian) { Array($0) })
            }
            next = min(next, lastPingAt + interval)
        }
        return next
    }

    /// Keeps the newest session ticket for links that join later; true
    /// when we took ownership of `session`.
    func storeSession(_ session: OpaquePointer) -> Bool {
        if let old = resumption { SSL_SESSION_free(old) }
        resumption = session
        return true
    }

    var resumableSession: OpaquePointer? { resumption }

    // MARK: ending

    /// Closes with an application error code, as the user asked.
    package func closeByApplication(errorCode: UInt64, reason: String) {
        finish(.closedLocally, telling: MuxClose(isApplication: true, code: errorCode, reason: reason))
    }

    /// Tears the connection down and tells everyone waiting on it; with
    /// `close`, the peer learns why on every link.
    func finish(_ error: TransportError, telling close: MuxClose? = nil) {
        guard !isClosed else { return }
        let wasEstablished = isEstablished
        state = .closed(error)
        if wasEstablished || !isClient {
            endpoint.logger.debug("connection closed", metadata: ["peer": "\(remoteAddress)", "reason": "\(error)"])
        }
        failStreamsAndWaiters(error)
        waiters.acceptQueue.removeAll()
        streams.removeAll()
        waitingForCredit.removeAll()
        var record: [UInt8]?
        if let close {
            var out: [UInt8] = []
            MuxRecord.append(.close, payload: close.encoded(), to: &out)
            record = out
        }
        for link in links { link.beginDrain(closing: record) }
        endpoint.forget(self)
        receiveWindowHeld = false
        endpoint.memoryBudget.releaseReceiveWindow(receiveWindow)
    }

    // MARK: statistics

    func statistics() -> ConnectionStatistics {
        var s = ConnectionStatistics()
        s.handshakeDuration = handshakeDuration
        var total = retired
        for link in links {
            guard let info = link.currentInfo else { continue }
            total.bytesSent += info.bytesSent
            total.bytesReceived += info.bytesReceived
            total.segmentsOut += info.segmentsOut
            total.segmentsIn += info.segmentsIn
        }
        s.bytesSent = total.bytesSent
        s.bytesReceived = total.bytesReceived
        s.packetsSent = total.segmentsOut
        s.packetsReceived = total.segmentsIn
        // Path figures come from the session link's kernel state.
        guard let session = sessionLink, let info = session.currentInfo else { return s }
        s.latestRTT = .microseconds(Int64(info.rttMicroseconds))
        s.smoothedRTT = .microseconds(Int64(info.rttMicroseconds))
        s.minRTT = .microseconds(Int64(info.minRTTMicroseconds == UInt64(UInt32.max) ? 0 : info.minRTTMicroseconds))
        s.rttVariance = .microseconds(Int64(info.rttVarianceMicroseconds))
        s.ptoCount = info.backoff
        s.congestionWindow = info.cwndSegments * info.mss
        s.slowStartThreshold = info.ssthreshSegments >= 0x7fff_ffff ? 0 : info.ssthreshSegments * info.mss
        s.bytesInFlight = info.unackedSegments * info.mss
        s.deliveryRateBytesPerSecond = info.deliveryRate
        s.pacingRateBytesPerSecond = info.pacingRate == UInt64.max ? 0 : Double(info.pacingRate)
        s.maxUDPPayloadSize = Int(info.mss)
        s.congestionControl = info.congestionControl
        return s
    }
}
