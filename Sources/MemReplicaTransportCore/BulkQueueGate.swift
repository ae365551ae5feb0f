/// Keeps bulk streams from building a queue at the path's bottleneck while
/// urgent streams (fault and READ answers) are in use.
///
/// An answer sent behind bulk data waits in the bottleneck's queue for as
/// long as that queue is, and bbr fills the window it allows itself, a
/// little over the bandwidth-delay product: the surplus is the queue
/// (bench/RESULTS.md, WAN efficiency, has the figures). So while an urgent stream has sent within `urgentActivity`, a bulk
/// stream writes only while the connection's bytes in flight are under
/// the controller's bandwidth × (min RTT + `allowance`): the pipe is kept
/// full and the queue about `allowance` long. The window above that limit
/// is left to the urgent streams, which are not held.
///
/// It needs a bandwidth estimate: bbr's pacing rate. Controllers without
/// one (cubic and reno in ngtcp2 0.12) are never held. In bbr's start-up
/// the pacing rate is 2.77 × its estimate, so the gate does not slow the
/// search for the path's rate.
package struct BulkQueueGate: Sendable {
    /// Queue bulk may keep at the bottleneck while urgent streams send.
    package var allowance: Duration
    /// How long after an urgent stream's last send the gate stays on.
    package var urgentActivity: Duration
    /// When an urgent stream last sent (ns, the connection's clock).
    private var lastUrgentSend: UInt64?
    /// Bytes in flight above which bulk waits (`.max`: not held).
    private var limit: UInt64 = .max
    private var inFlight: UInt64 = 0
    /// When the last round started (ns); 0 before the first.
    private var roundStart: UInt64 = 0
    /// Time bulk spent held, in ns: each round that ended with bulk at the
    /// limit counts until the next round starts (`stats`, Prometheus).
    package private(set) var heldNanoseconds: UInt64 = 0

    package init(allowance: Duration, urgentActivity: Duration = .seconds(1)) {
        self.allowance = allowance
        self.urgentActivity = urgentActivity
    }

    /// An urgent stream sent at `now`.
    package mutating func urgentSent(now: UInt64) {
        lastUrgentSend = now
    }

    /// Starts a round of writes at `now`, from the controller's state:
    /// `pacingRate` in bytes per ns (0: none), `minRTT` in ns (0: none yet).
    package mutating func update(now: UInt64, bytesInFlight: UInt64, pacingRate: Double, minRTT: UInt64) {
        if isHolding, !bulkMayWrite, roundStart > 0 { heldNanoseconds &+= now &- roundStart }
        roundStart = now
        inFlight = bytesInFlight
        limit = .max
        guard let last = lastUrgentSend, now &- last <= urgentActivity.saturatingNanoseconds,
              pacingRate > 0, minRTT > 0 else { return }
        let window = pacingRate * Double(minRTT + allowance.saturatingNanoseconds)
        limit = window < Double(UInt64.max) ? UInt64(window) : .max
    }

    /// `bytes` more went out in this round.
    package mutating func sent(_ bytes: Int) {
        inFlight += UInt64(bytes)
    }

    /// Whether bulk streams may write now.
    package var bulkMayWrite: Bool { inFlight < limit }

    /// Whether the gate holds bulk in this round at all.
    package var isHolding: Bool { limit != .max }
}
