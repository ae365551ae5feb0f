/// How many stateless resets an endpoint sends (a token bucket): each
/// costs an HKDF and a datagram, and anyone can send packets with unknown
/// connection IDs. Loop-confined.
struct StatelessResetLimiter {
    /// Resets per second, and the burst: a restarted peer answers the
    /// first packet of each of up to this many old connections at once;
    /// a peer whose reset was dropped sends again (a keep-alive a second
    /// later), so nothing is lost beyond that delay.
    static let perSecond = 256

    private var available = Double(perSecond)
    private var lastRefill: UInt64 = 0

    /// Takes one reset from the bucket; false when it is empty.
    mutating func allow(now: UInt64) -> Bool {
        if now > lastRefill {
            let earned = Double(now - lastRefill) / 1e9 * Double(Self.perSecond)
            available = min(Double(Self.perSecond), available + earned)
            lastRefill = now
        }
        guard available >= 1 else { return false }
        available -= 1
        return true
    }
}
