import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
#if canImport(Glibc)
import Glibc
#endif

/// Datagrams in: routed to their connection by connection ID, or, for a
/// client's first Initial, admitted under the endpoint's caps (a new
/// connection, a Retry, or nothing).
extension QUICEndpoint {
    func handleDatagram(_ data: UnsafeRawBufferPointer, from: SocketAddressStorage, now: UInt64) {
        var vc = ngtcp2_version_cid()
        let bytes = data.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let rc = ngtcp2_pkt_decode_version_cid(&vc, bytes, data.count, ConnectionID.localLength)
        guard rc == 0, let dcid = vc.dcid else { return }  // garbage or another version: drop
        let key = ConnectionID(UnsafeRawBufferPointer(start: dcid, count: vc.dcidlen))
        let core: QUICConnectionCore
        if let known = routes[key] {
            core = known
        } else if bytes[0] & 0x80 == 0 {
            // A short header no connection here owns: a stateless reset
            // for one of ours, or a packet of a connection we lost.
            handleUnknownShortHeader(data, dcid: UnsafeRawBufferPointer(start: dcid, count: vc.dcidlen), from: from, now: now)
            return
        } else {
            guard configuration.acceptsConnections, !loop.stopping, loop.live.count < Self.maxConnections else { return }
            var header = ngtcp2_pkt_hd()
            guard ngtcp2_accept(&header, bytes, data.count) == 0 else { return }
            guard let admitted = admit(header, from: from, now: now) else { return }
            do {
                core = try QUICConnectionCore.server(endpoint: self, remote: from, header: header,
                                                     originalDCID: admitted.originalDCID, retrySCID: admitted.retrySCID)
            } catch {
                logger.warning("cannot accept connection from \(PeerAddress(storage: from)): \(error)")
                return
            }
            core.admittedHost = admitted.host
            core.countedHalfOpen = true
            admission.connectionOpened(host: admitted.host)
            admission.handshakeStarted(host: admitted.host)
            register(core)
        }
        core.receive(data, now: now)
        if !core.isClosed { needsWrite(core) }
    }

    /// Decides a client's first Initial: a new connection (with the
    /// original DCID a valid Retry token carried), a Retry sent instead
    /// (nil), or nothing (nil: over a cap, or a token that does not verify).
    private func admit(_ header: ngtcp2_pkt_hd, from: SocketAddressStorage, now: UInt64)
        -> (host: String, originalDCID: ngtcp2_cid, retrySCID: ngtcp2_cid?)? {
        let host = PeerAddress(storage: from).host
        var header = header
        var originalDCID = header.dcid
        var validated = false
        if header.token.len > 0, header.token.base[0] == UInt8(NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY) {
            let lifetime = PeerLimits.retryTokenLifetime.saturatingNanoseconds
            let rc = retryTokenSecret.withUnsafeBufferPointer { secret in
                from.withSockaddr { addr, len in
                    ngtcp2_crypto_verify_retry_token(&originalDCID, header.token.base, header.token.len,
                                                     secret.baseAddress, secret.count, header.version,
                                                     addr, ngtcp2_socklen(len), &header.dcid, lifetime, now)
                }
            }
            guard rc == 0 else {
                logger.debug("dropping an Initial with an invalid Retry token", metadata: ["peer": "\(PeerAddress(storage: from))"])
                return nil
            }
            validated = true
        }
        switch admission.decide(host: host, addressValidated: validated) {
        case .accept:
            return (host, originalDCID, validated ? header.dcid : nil)
        case .retry:
            sendRetry(header, to: from, now: now)
            return nil
        case .refuse(let reason):
            logger.warning("refusing a QUIC connection: \(reason)", metadata: ["peer": "\(PeerAddress(storage: from))"])
            return nil
        }
    }

    /// Answers `packet`, a client's Initial that ngtcp2 asked a Retry for,
    /// with one, unless the client already followed a Retry (it takes only
    /// one): then nothing is sent and its next Initial starts afresh.
    func answerWithRetry(_ packet: UnsafeRawBufferPointer, from: SocketAddressStorage, now: UInt64) {
        var header = ngtcp2_pkt_hd()
        guard ngtcp2_accept(&header, packet.baseAddress!.assumingMemoryBound(to: UInt8.self), packet.count) == 0,
              header.type == UInt8(NGTCP2_PKT_INITIAL.rawValue) else { return }
        if header.token.len > 0, header.token.base[0] == UInt8(NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY) { return }
        sendRetry(header, to: from, now: now)
    }

    /// Answers an Initial with a Retry carrying a token that binds the
    /// client's address and original DCID to a new connection ID.
    private func sendRetry(_ header: ngtcp2_pkt_hd, to remote: SocketAddressStorage, now: UInt64) {
        var originalDCID = header.dcid
        var clientSCID = header.scid
        var (_, retrySCID) = ConnectionID.random()
        // NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN (a sizeof macro Swift cannot
        // import) is 78 in ngtcp2 0.12.
        var token = [UInt8](repeating: 0, count: 128)
        let tokenLength = retryTokenSecret.withUnsafeBufferPointer { secret in
            remote.withSockaddr { addr, len in
                ngtcp2_crypto_generate_retry_token(&token, secret.baseAddress, secret.count, header.version,
                                                   addr, ngtcp2_socklen(len), &retrySCID, &originalDCID, now)
            }
        }
        guard tokenLength > 0 else { return }
        var packet = [UInt8](repeating: 0, count: 256)
        let n = ngtcp2_crypto_write_retry(&packet, packet.count, header.version, &clientSCID, &retrySCID,
                                          &originalDCID, token, Int(tokenLength))
        guard n > 0 else { return }
        retriesSent += 1
        _ = packet.withUnsafeBytes { socket.send(UnsafeRawBufferPointer(rebasing: $0.prefix(n)), segmentSize: 0, to: remote) }
    }

    /// Retry packets this endpoint has sent.
    func retryCount() async -> Int { await onLoop { [self] in retriesSent } }

    /// Server connections whose handshake has not completed.
    func halfOpenHandshakeCount() async -> Int { await onLoop { [self] in admission.halfOpenTotal } }

    /// Called as a server connection's handshake ends (either way).
    func serverHandshakeEnded(_ core: QUICConnectionCore) {
        guard let host = core.admittedHost, core.countedHalfOpen else { return }
        core.countedHalfOpen = false
        admission.handshakeEnded(host: host)
    }

    /// A reason to refuse `core`, whose handshake just completed, when its
    /// certificate already holds `maxConnectionsPerIdentity` connections.
    func identityOverCap(_ core: QUICConnectionCore) -> String? {
        let limit = configuration.peerLimits.maxConnectionsPerIdentity
        let fingerprint = core.peerIdentity.fingerprint
        let held = loop.live.values.reduce(0) { n, other in
            guard other !== core, !other.isClient, case .established = other.state,
                  other.peerIdentity.fingerprint == fingerprint else { return n }
            return n + 1
        }
        guard held >= limit else { return nil }
        return "\(held) connections from this certificate already (limit \(limit))"
    }
}
