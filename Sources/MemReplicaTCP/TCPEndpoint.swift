import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import COpenSSL
import DequeModule
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// TLS 1.3 over TCP (OpenSSL), carrying the same streams and frames as the
/// QUIC transport: an optional listening socket plus every TCP connection
/// made or accepted, all owned by one loop thread (as `QUICEndpoint` owns
/// its UDP socket). Other threads post closures to the loop's command queue
/// and wake it through an eventfd; they never touch a socket or an SSL
/// object.
///
/// Streams share one TCP connection (`tcp`) or, with
/// `TCPConfiguration.connectionPerStream`, each has its own
/// (`tcp-per-region`); a listener serves both kinds of client.
public final class TCPEndpoint: Transport, CommandLoop, @unchecked Sendable {
    public let configuration: TCPConfiguration
    /// Outgoing connections start from this address's host (when not a wildcard).
    let bindAddress: PeerAddress
    public let localAddress: PeerAddress
    let logger: Logger
    let tls: OpenSSLContext
    /// Our certificate's identity, as peers will see it.
    public var localIdentity: PeerIdentity { tls.localIdentity }
    private let listener: Int32?
    let poller: Poller
    /// Commands, live connections, accept and stop (shared with QUIC).
    let loop: EndpointLoop<TCPConnectionCore>
    /// Other threads reach the loop through it (`post`, `onLoop`).
    package var commands: EventLoopCommandQueue { loop.commands }

    private static let listenerToken: UInt64 = 1

    // Loop-confined state.
    var nextToken: UInt64 = 2
    var links: [UInt64: TCPLink] = [:]
    var byToken: [[UInt8]: TCPConnectionCore] = [:]
    var writeQueue = Deque<TCPLink>()
    var pendingReads: [TCPLink] = []
    var readersToWake: [TCPStreamCore] = []
    var retired: [TCPLink] = []
    /// Inbound links by source host, and the caps on them.
    var admission: ConnectionAdmission
    /// Accepted TCP connections whose TLS handshake waits for one of their
    /// host's `maxHalfOpenPerAddress` slots, oldest first, by host.
    private var waitingToHandshake: [String: Deque<(fd: Int32, address: PeerAddress, since: UInt64)>] = [:]
    private var connectionDeadline = UInt64.max
    /// The time of the current loop turn.
    private(set) var now: UInt64 = monotonicNanoseconds()
    let receiveBuffer: UnsafeMutableRawBufferPointer

    /// Binds `address` (a listener only with `acceptsConnections`) and
    /// starts the loop thread.
    public init(bind address: PeerAddress, tls tlsConfiguration: TLSConfiguration,
                configuration: TCPConfiguration, logger: Logger = Logger(label: "memreplica.tcp")) throws {
        self.configuration = configuration.clampedToBudget()
        self.logger = logger
        admission = ConnectionAdmission(limits: configuration.peerLimits)
        bindAddress = address
        tls = try OpenSSLContext(tlsConfiguration, applicationProtocols: configuration.applicationProtocols)
        // OpenSSL writes to sockets with write(2): a peer that reset the
        // connection must give EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        poller = try TransportError.mappingSystemErrors { try Poller() }
        loop = EndpointLoop(waking: poller)
        if configuration.acceptsConnections {
            let (fd, bound) = try TCPSocket.listen(on: address, bufferSize: configuration.socketBufferSize,
                                                   userTimeout: configuration.livenessTimeout,
                                                   congestionControl: configuration.congestionControl,
                                                   namespace: configuration.networkNamespace)
            listener = fd
            localAddress = bound
            do {
                try poller.add(fd, token: Self.listenerToken, events: EPOLLIN.rawValue)
            } catch {
                Glibc.close(fd)
                throw error
            }
        } else {
            listener = nil
            localAddress = address
        }
        receiveBuffer = .allocate(byteCount: 256 << 10, alignment: 16)
        logger.debug("TCP endpoint ready", metadata: [
            "address": "\(localAddress)", "listening": "\(listener != nil)",
            "mode": "\(configuration.connectionPerStream ? "tcp-per-region" : "tcp")",
        ])
        // The thread keeps the endpoint alive until `close()` ends the loop.
        loop.startThread(named: "tcp-loop \(localAddress)") { self.run() }
    }

    deinit {
        receiveBuffer.deallocate()
    }

    // MARK: Transport

    /// What this endpoint's streams hold counts against this budget.
    public var memoryBudget: MemoryBudget { configuration.memoryBudget }

    public func connect(to address: PeerAddress) async throws -> any TransportConnection {
        try await connectTCP(to: address)
    }

    public func connectTCP(to address: PeerAddress) async throws -> TCPConnection {
        if address.isWildcard {
            throw TransportError.badAddress(input: address.description, reason: "a peer address needs a host")
        }
        let core = try await Delivery<TCPConnectionCore>.wait { d in
            post { [self] in
                guard !loop.stopping else { d.fail(TransportError.closedLocally); return }
                guard let window = memoryBudget.reserveReceiveWindow(wanted: configuration.connectionReceiveWindow) else {
                    d.fail(TransportError.memoryBudgetExhausted(limit: memoryBudget.limit))
                    return
                }
                let core = TCPConnectionCore(endpoint: self, isClient: true, remoteAddress: address, receiveWindow: window)
                do {
                    let link = try makeClientLink(to: address, role: .session, for: core)
                    core.connectWaiter = d
                    loop.live[ObjectIdentifier(core)] = core
                    core.attach(link)
                } catch {
                    d.fail(error)
                }
            }
        }
        return TCPConnection(core: core)
    }

    public func accept() async -> (any TransportConnection)? {
        await acceptTCP()
    }

    public func acceptTCP() async -> TCPConnection? {
        await loop.accept().map { TCPConnection(core: $0) }
    }

    public func connectionSummaries() async -> [ConnectionSummary] {
        await loop.summaries()
    }

    public func close() async {
        await loop.stop { [self] in
            if let listener {
                poller.remove(listener)
                Glibc.close(listener)
            }
            for core in Array(loop.live.values) {
                core.closeByApplication(errorCode: 0, reason: "endpoint closing")
            }
            for link in Array(links.values) where link.connection == nil { link.closeNow() }
            dropWaitingHandshakes(all: true)
        }
    }

    // MARK: loop

    private func run() {
        while true {
            loop.commands.runPending()
            if loop.stopping && links.isEmpty && retired.isEmpty { break }
            let deadline = writeQueue.isEmpty && pendingReads.isEmpty && retired.isEmpty ? nextDeadline() : 0
            poller.wait(until: deadline) { token, events in
                now = monotonicNanoseconds()
                if token == Self.listenerToken {
                    acceptPending()
                } else if let link = links[token] {
                    link.handle(events: events)
                }
            }
            now = monotonicNanoseconds()
            let again = pendingReads
            pendingReads.removeAll(keepingCapacity: true)
            for link in again { link.readAvailable() }
            wakeReaders()
            loop.commands.runPending()
            handleExpiries()
            writeAll()
            wakeReaders()
            releaseRetired()
        }
        // Links hold their endpoint too.
        loop.exit {
            byToken.removeAll()
            writeQueue.removeAll()
            readersToWake.removeAll()
        }
        loop.resumeStopWaiters()
    }

    private func wakeReaders() {
        guard !readersToWake.isEmpty else { return }
        let streams = readersToWake
        readersToWake.removeAll(keepingCapacity: true)
        for s in streams { s.wakeReader() }
    }

    private func acceptPending() {
        guard let listener else { return }
        // Bounded so a connection flood cannot starve the other links.
        for _ in 0..<64 {
            guard let (fd, remote) = TCPSocket.acceptOne(listener, userTimeout: configuration.livenessTimeout,
                                                         congestionControl: configuration.congestionControl) else { return }
            let address = PeerAddress(storage: remote)
            guard !loop.stopping, links.count < TCPConfiguration.maxLinks else {
                logger.warning("refusing a TCP connection: \(TCPConfiguration.maxLinks) already open", metadata: ["peer": "\(address)"])
                Glibc.close(fd)
                continue
            }
            // A TCP handshake proved the address: no Retry here.
            if case .refuse(let reason) = admission.decide(host: address.host, addressValidated: true) {
                logger.warning("refusing a TCP connection: \(reason)", metadata: ["peer": "\(address)"])
                Glibc.close(fd)
                continue
            }
            admission.connectionOpened(host: address.host)
            if admission.mayStartHandshake(host: address.host) {
                startHandshake(fd: fd, address: address)
            } else {
                // A burst (tcp-per-region opens a link per region) waits
                // its turn, un-started, within the handshake timeout.
                waitingToHandshake[address.host, default: []].append((fd, address, now))
            }
        }
    }

    /// Starts the server side of TLS on an accepted connection counted by
    /// `connectionOpened`.
    private func startHandshake(fd: Int32, address: PeerAddress) {
        do {
            let ssl = try tls.makeSSL(server: true, fd: fd)
            let link = TCPLink(endpoint: self, token: takeToken(), fd: fd, ssl: ssl, isClient: false,
                               remoteAddress: address, role: .unassigned, state: .handshaking)
            do {
                try register(link)
            } catch {
                SSL_free(ssl)
                throw error
            }
            link.admittedHost = address.host
            link.countedHalfOpen = true
            admission.handshakeStarted(host: address.host)
        } catch {
            logger.warning("cannot accept a TCP connection from \(address): \(error)")
            Glibc.close(fd)
            admission.closed(host: address.host)
        }
    }

    /// Starts the next waiting handshakes from `host` while it has slots.
    func startWaitingHandshakes(from host: String) {
        while admission.mayStartHandshake(host: host), let next = waitingToHandshake[host]?.popFirst() {
            if waitingToHandshake[host]?.isEmpty == true { waitingToHandshake[host] = nil }
            startHandshake(fd: next.fd, address: next.address)
        }
    }

    /// Closes waiting connections older than the handshake timeout (or all).
    private func dropWaitingHandshakes(all: Bool = false) {
        let timeout = configuration.handshakeTimeout.saturatingNanoseconds
        for host in Array(waitingToHandshake.keys) {
            while let first = waitingToHandshake[host]?.first, all || now >= first.since + timeout {
                waitingToHandshake[host]?.removeFirst()
                Glibc.close(first.fd)
                admission.closed(host: host)
            }
            if waitingToHandshake[host]?.isEmpty == true { waitingToHandshake[host] = nil }
        }
    }

    private func handleExpiries() {
        for link in Array(links.values) where link.deadline <= now { link.expire() }
        if !waitingToHandshake.isEmpty { dropWaitingHandshakes() }
        connectionDeadline = UInt64.max
        for core in Array(loop.live.values) {
            connectionDeadline = min(connectionDeadline, core.tick(now: now))
        }
    }

    /// When the loop must next wake: handshake and drain deadlines, idle
    /// timeouts and keep-alives.
    private func nextDeadline() -> UInt64 {
        var earliest = connectionDeadline
        for link in links.values { earliest = min(earliest, link.deadline) }
        let timeout = configuration.handshakeTimeout.saturatingNanoseconds
        for waiting in waitingToHandshake.values {
            if let first = waiting.first { earliest = min(earliest, first.since + timeout) }
        }
        return earliest
    }

    private func writeAll() {
        var rounds = writeQueue.count
        while rounds > 0, let link = writeQueue.popFirst() {
            rounds -= 1
            link.queuedForWrite = false
            link.flush()
        }
    }

    private func releaseRetired() {
        guard !retired.isEmpty else { return }
        let done = retired
        retired.removeAll()
        for link in done {
            handshakeEnded(link)
            if let host = link.admittedHost {
                link.admittedHost = nil
                admission.closed(host: host)
            }
            poller.remove(link.fd)
            links[link.token] = nil
            link.connection?.detach(link)
            link.release()
        }
    }

}
