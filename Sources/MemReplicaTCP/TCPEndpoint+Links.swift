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

/// The endpoint's links and connections as the loop keeps them: tokens,
/// client links (and the extra links of per-stream connections), adoption
/// of a link by its connection, interest, retirement.
extension TCPEndpoint {
    func takeToken() -> UInt64 {
        defer { nextToken += 1 }
        return nextToken
    }

    func register(_ link: TCPLink) throws {
        try poller.add(link.fd, token: link.token, events: link.epollEvents)
        links[link.token] = link
    }

    /// A TCP connection out to `address`, for `core`, as `role`.
    func makeClientLink(to address: PeerAddress, role: TCPLink.Role, for core: TCPConnectionCore) throws -> TCPLink {
        guard links.count < TCPConfiguration.maxLinks else {
            throw TransportError.protocolFailure("this endpoint already has \(TCPConfiguration.maxLinks) TCP connections")
        }
        let fd = try TCPSocket.startConnect(to: address.storage, source: bindAddress,
                                            bufferSize: configuration.socketBufferSize, userTimeout: configuration.livenessTimeout,
                                            congestionControl: configuration.congestionControl,
                                            namespace: configuration.networkNamespace)
        do {
            let ssl = try tls.makeSSL(server: false, fd: fd)
            if let session = core.resumableSession { SSL_set_session(ssl, session) }
            let link = TCPLink(endpoint: self, token: takeToken(), fd: fd, ssl: ssl, isClient: true,
                               remoteAddress: address, role: role, state: .connecting)
            link.connection = core
            do {
                try register(link)
            } catch {
                SSL_free(ssl)
                throw error
            }
            return link
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// `tcp-per-region`: a new TCP connection that joins `core` carrying `stream`.
    func openJoinLink(for core: TCPConnectionCore, stream: Int64) throws -> TCPLink {
        let link = try makeClientLink(to: core.remoteAddress, role: .join(stream: stream), for: core)
        core.attach(link)
        return link
    }

    /// Server: the client's first SETTINGS on `link` starts a connection or
    /// joins one. A join must name a live connection by its token and prove
    /// the same certificate as the connection's first TCP connection.
    func adopt(_ link: TCPLink, settings: MuxSettings) throws {
        handshakeEnded(link)
        switch settings.role {
        case .connection:
            guard !loop.stopping else { throw MuxViolation(.joinRefused, "the endpoint is closing") }
            let limit = configuration.peerLimits.maxConnectionsPerIdentity
            let held = loop.live.values.filter {
                !$0.isClient && !$0.isClosed && $0.peerIdentity.fingerprint == link.peerIdentity.fingerprint
            }.count
            guard held < limit else {
                logger.warning("refusing a TCP connection: \(held) connections from this certificate already (limit \(limit))",
                               metadata: ["peer": "\(link.remoteAddress)", "identity": "\(link.peerIdentity)"])
                throw MuxViolation(.connectionLimit, "\(held) connections from this certificate already (limit \(limit))")
            }
            guard let window = memoryBudget.reserveReceiveWindow(wanted: configuration.connectionReceiveWindow) else {
                logger.warning("refusing a TCP connection: the memory budget is exhausted", metadata: ["peer": "\(link.remoteAddress)"])
                throw MuxViolation(.connectionLimit, "the peer's memory budget has no room for another connection")
            }
            let core = TCPConnectionCore(endpoint: self, isClient: false, remoteAddress: link.remoteAddress, receiveWindow: window)
            var token = [UInt8](repeating: 0, count: MuxLimits.tokenLength)
            var rng = SystemRandomNumberGenerator()
            for i in token.indices { token[i] = rng.next() }
            core.token = token
            core.peerIdentity = link.peerIdentity
            core.apply(settings)
            link.connection = core
            link.role = .session
            core.attach(link)
            link.queueControl(.settings, payload: core.localSettings(token: token).encoded())
            core.established()
            loop.live[ObjectIdentifier(core)] = core
            byToken[token] = core
            logger.info("peer connected", metadata: ["peer": "\(core.remoteAddress)", "identity": "\(core.peerIdentity)",
                                                     "transport": "tcp"])
            loop.established(core)
        case .join:
            guard let core = byToken[settings.token], !core.isClosed else {
                throw MuxViolation(.joinRefused, "no connection has that token")
            }
            guard core.peerIdentity.fingerprint == link.peerIdentity.fingerprint else {
                throw MuxViolation(.joinRefused, "a joining TCP connection must present the connection's certificate")
            }
            guard let stream = settings.joinStream, stream & 3 == 0, core.streams[stream] == nil else {
                throw MuxViolation(.joinRefused, "a joining TCP connection must carry a new client stream")
            }
            link.connection = core
            link.role = .join(stream: stream)
            core.attach(link)
            try core.openPeerStream(stream, on: link)
        }
    }

    /// A server link's handshake (TLS and SETTINGS) ended, either way.
    func handshakeEnded(_ link: TCPLink) {
        guard link.countedHalfOpen, let host = link.admittedHost else { return }
        link.countedHalfOpen = false
        admission.handshakeEnded(host: host)
        startWaitingHandshakes(from: host)
    }

    func needsWrite(_ link: TCPLink) {
        guard !link.queuedForWrite, !link.isClosed else { return }
        link.queuedForWrite = true
        writeQueue.append(link)
    }

    func readAgain(_ link: TCPLink) {
        pendingReads.append(link)
    }

    func wakeLater(_ stream: TCPStreamCore) {
        readersToWake.append(stream)
    }

    func updateInterest(_ link: TCPLink) {
        poller.modify(link.fd, token: link.token, events: link.epollEvents)
    }

    /// A link is closed: free it at the end of this loop turn.
    func retire(_ link: TCPLink) {
        if let i = writeQueue.firstIndex(where: { $0 === link }) { writeQueue.remove(at: i) }
        link.queuedForWrite = false
        retired.append(link)
    }

    /// Called by a connection as it finishes.
    func forget(_ core: TCPConnectionCore) {
        loop.live[ObjectIdentifier(core)] = nil
        if byToken[core.token] === core { byToken[core.token] = nil }
    }
}
