/// Counts of the connections peers opened to one endpoint, by source host,
/// and the decision for the next one (`PeerLimits`). Confined to the
/// endpoint's loop thread.
struct ConnectionAdmission {
    let limits: PeerLimits
    private(set) var halfOpenTotal = 0
    private var halfOpenByHost: [String: Int] = [:]
    private var connectionsByHost: [String: Int] = [:]

    enum Decision: Equatable {
        case accept
        /// QUIC only: answer with a Retry; the client proves its address.
        case retry
        case refuse(String)
    }

    init(limits: PeerLimits) { self.limits = limits }

    /// A new inbound connection from `host`. `addressValidated`: the
    /// transport proved the address (a TCP handshake, a QUIC Retry token).
    ///
    /// QUIC: past `maxHalfOpenPerAddress` half-open handshakes from the
    /// address, or `retryThreshold` in all, an Initial without a token is
    /// answered with a Retry, so a flood from spoofed addresses costs no
    /// state; a validated address is then bounded by
    /// `maxConnectionsPerAddress`. TCP's address is always validated, so
    /// `maxHalfOpenPerAddress` is a hard limit there (`hardHalfOpenLimit`).
    func decide(host: String, addressValidated: Bool, hardHalfOpenLimit: Bool) -> Decision {
        let connections = connectionsByHost[host, default: 0]
        if connections >= limits.maxConnectionsPerAddress {
            return .refuse("\(connections) connections from \(host) already (limit \(limits.maxConnectionsPerAddress))")
        }
        let halfOpen = halfOpenByHost[host, default: 0]
        if hardHalfOpenLimit, halfOpen >= limits.maxHalfOpenPerAddress {
            return .refuse("\(halfOpen) handshakes from \(host) in progress already (limit \(limits.maxHalfOpenPerAddress))")
        }
        if !addressValidated, halfOpen >= limits.maxHalfOpenPerAddress || halfOpenTotal >= limits.retryThreshold {
            return .retry
        }
        return .accept
    }

    mutating func opened(host: String) {
        halfOpenTotal += 1
        halfOpenByHost[host, default: 0] += 1
        connectionsByHost[host, default: 0] += 1
    }

    /// The handshake of a connection counted by `opened` ended (either way).
    mutating func handshakeEnded(host: String) {
        halfOpenTotal -= 1
        Self.decrement(&halfOpenByHost, host)
    }

    /// A connection counted by `opened` is gone.
    mutating func closed(host: String) {
        Self.decrement(&connectionsByHost, host)
    }

    private static func decrement(_ counts: inout [String: Int], _ host: String) {
        guard let n = counts[host] else { return }
        counts[host] = n > 1 ? n - 1 : nil
    }
}
