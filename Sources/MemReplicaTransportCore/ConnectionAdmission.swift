/// Counts of the connections peers opened to one endpoint, by source host,
/// and the decision for the next one (`PeerLimits`). Confined to the
/// endpoint's loop thread.
package struct ConnectionAdmission {
    let limits: PeerLimits
    package private(set) var halfOpenTotal = 0
    private var halfOpenByHost: [String: Int] = [:]
    private var connectionsByHost: [String: Int] = [:]

    package enum Decision: Equatable {
        case accept
        /// QUIC only: answer with a Retry; the client proves its address.
        case retry
        case refuse(String)
    }

    package init(limits: PeerLimits) { self.limits = limits }

    /// A new inbound connection from `host`. `addressValidated`: the
    /// transport proved the address (a TCP handshake, a QUIC Retry token).
    ///
    /// QUIC: past `maxHalfOpenPerAddress` half-open handshakes from the
    /// address, or `retryThreshold` in all, an Initial without a token is
    /// answered with a Retry, so a flood from spoofed addresses costs no
    /// state; a validated address is then bounded by
    /// `maxConnectionsPerAddress`. TCP (always validated) instead holds a
    /// connection past `maxHalfOpenPerAddress` un-started (`mayStartHandshake`).
    package func decide(host: String, addressValidated: Bool) -> Decision {
        let connections = connectionsByHost[host, default: 0]
        if connections >= limits.maxConnectionsPerAddress {
            return .refuse("\(connections) connections from \(host) already (limit \(limits.maxConnectionsPerAddress))")
        }
        if !addressValidated, !mayStartHandshake(host: host) || halfOpenTotal >= limits.retryThreshold {
            return .retry
        }
        return .accept
    }

    /// Fewer than `maxHalfOpenPerAddress` handshakes from `host` are running.
    package func mayStartHandshake(host: String) -> Bool {
        halfOpenByHost[host, default: 0] < limits.maxHalfOpenPerAddress
    }

    /// A connection from `host` is counted from now until `closed`.
    package mutating func connectionOpened(host: String) {
        connectionsByHost[host, default: 0] += 1
    }

    /// A handshake from `host` runs from now until `handshakeEnded`.
    package mutating func handshakeStarted(host: String) {
        halfOpenTotal += 1
        halfOpenByHost[host, default: 0] += 1
    }

    /// A handshake counted by `handshakeStarted` ended (either way).
    package mutating func handshakeEnded(host: String) {
        halfOpenTotal -= 1
        Self.decrement(&halfOpenByHost, host)
    }

    /// A connection counted by `connectionOpened` is gone.
    package mutating func closed(host: String) {
        Self.decrement(&connectionsByHost, host)
    }

    private static func decrement(_ counts: inout [String: Int], _ host: String) {
        guard let n = counts[host] else { return }
        counts[host] = n > 1 ? n - 1 : nil
    }
}
