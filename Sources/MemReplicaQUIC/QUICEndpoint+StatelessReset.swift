import QuicShim
import MemReplicaTransportCore

/// Stateless reset (RFC 9000 §10.3): a datagram with a short header whose
/// connection ID no connection here owns is either a reset from a peer
/// that lost one of our connections (its last 16 bytes are the token it
/// gave us), or a packet for a connection this endpoint lost, e.g. before a
/// restart. The second gets a reset back, so its sender stops at once
/// instead of after the liveness timeout. Loop thread only.
extension QUICEndpoint {
    /// The smallest datagram answered with a reset: a short header with our
    /// connection ID, the 4 bytes header protection samples from, and an
    /// AEAD tag, the least a real packet for one of our connections holds.
    static let smallestDatagramAnsweredByReset = 1 + ConnectionID.localLength + 4 + 16
    /// Resets are at most this long (RFC 9000 §10.3: a reset to a datagram
    /// of 43 bytes or fewer is one byte shorter than it, so two endpoints
    /// that both lost a connection cannot answer each other forever).
    static let largestStatelessReset = 43

    /// Handles a short-header datagram routed to no connection.
    func handleUnknownShortHeader(_ datagram: UnsafeRawBufferPointer, dcid: UnsafeRawBufferPointer,
                                  from: SocketAddressStorage, now: UInt64) {
        if let core = connectionReset(by: datagram, from: from) {
            // ngtcp2 checks the token and the path again, then drains.
            core.receive(datagram, now: now)
            return
        }
        sendStatelessReset(answering: datagram.count, dcid: dcid, to: from, now: now)
    }

    /// The connection to `from` whose peer sent this reset, if it is one.
    private func connectionReset(by datagram: UnsafeRawBufferPointer, from: SocketAddressStorage) -> QUICConnectionCore? {
        let tokenLength = Int(NGTCP2_STATELESS_RESET_TOKENLEN)
        guard datagram.count >= Int(NGTCP2_MIN_STATELESS_RESET_RANDLEN) + tokenLength else { return nil }
        let token = UnsafeRawBufferPointer(rebasing: datagram.suffix(tokenLength))
        return liveConnections.first { core in
            !core.isClosed && core.remote.sameEndpoint(as: from) && core.peerResetTokensContain(token)
        }
    }

    /// Answers a packet for a connection we do not have with a reset whose
    /// token is derived from our key and the connection ID it was sent to:
    /// the token we gave the peer for that ID, if it was ours.
    private func sendStatelessReset(answering length: Int, dcid: UnsafeRawBufferPointer, to: SocketAddressStorage,
                                    now: UInt64) {
        guard length >= Self.smallestDatagramAnsweredByReset, dcid.count <= Int(NGTCP2_MAX_CIDLEN),
              statelessResetLimiter.allow(now: now) else { return }
        var cid = ngtcp2_cid()
        withUnsafeMutableBytes(of: &cid.data) { $0.copyMemory(from: dcid) }
        cid.datalen = dcid.count
        var token = [UInt8](repeating: 0, count: Int(NGTCP2_STATELESS_RESET_TOKENLEN))
        guard makeStatelessResetToken(for: &cid, into: &token) else { return }
        // The first byte counts as random too; ngtcp2 sets its header bits.
        let size = min(length - 1, Self.largestStatelessReset)
        var random = [UInt8](repeating: 0, count: size - token.count)
        random.withUnsafeMutableBytes { fillRandom($0.baseAddress!, $0.count) }
        var packet = [UInt8](repeating: 0, count: size)
        let written = ngtcp2_pkt_write_stateless_reset(&packet, packet.count, token, random, random.count)
        guard written > 0 else { return }
        packet.withUnsafeBytes { sendWithoutConnection(UnsafeRawBufferPointer(rebasing: $0.prefix(Int(written))), to: to) }
    }

    /// The stateless reset token for one of our connection IDs.
    func makeStatelessResetToken(for cid: UnsafePointer<ngtcp2_cid>, into token: UnsafeMutablePointer<UInt8>) -> Bool {
        statelessResetSecret.withUnsafeBufferPointer { secret in
            ngtcp2_crypto_generate_stateless_reset_token(token, secret.baseAddress, secret.count, cid) == 0
        }
    }
}

extension QUICConnectionCore {
    /// Whether `token` is the stateless reset token of a connection ID the
    /// peer gave us (RFC 9000 §10.3.1), compared in constant time.
    func peerResetTokensContain(_ token: UnsafeRawBufferPointer) -> Bool {
        guard conn != nil else { return false }
        let count = ngtcp2_conn_get_num_active_dcid(conn)
        guard count > 0 else { return false }
        var entries = [ngtcp2_cid_token](repeating: ngtcp2_cid_token(), count: count)
        let filled = ngtcp2_conn_get_active_dcid(conn, &entries)
        var found = false
        for var entry in entries.prefix(filled) where entry.token_present != 0 {
            let same = withUnsafeBytes(of: &entry.token) { mine in
                zip(mine, token).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0 && mine.count == token.count
            }
            found = found || same
        }
        return found
    }
}

extension SocketAddressStorage {
    /// Same family, address and port (what a UDP peer is), whatever else
    /// the two sockaddr structures carry.
    func sameEndpoint(as other: SocketAddressStorage) -> Bool {
        guard family == other.family else { return false }
        return bytes.withUnsafeBytes { a in
            other.bytes.withUnsafeBytes { b in
                switch family {
                case AF_INET:
                    let x = a.loadUnaligned(as: sockaddr_in.self), y = b.loadUnaligned(as: sockaddr_in.self)
                    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr
                case AF_INET6:
                    var x = a.loadUnaligned(as: sockaddr_in6.self), y = b.loadUnaligned(as: sockaddr_in6.self)
                    return x.sin6_port == y.sin6_port && x.sin6_scope_id == y.sin6_scope_id
                        && withUnsafeBytes(of: &x.sin6_addr) { p in withUnsafeBytes(of: &y.sin6_addr) { q in p.elementsEqual(q) } }
                default:
                    return a.elementsEqual(b)
                }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
