import MemReplicaSystem
import Foundation

/// The bytes one peer process lets its transports hold for peers, on every
/// connection of every endpoint given the same budget:
///
/// - receive buffers: a connection reserves its whole flow-control receive
///   window when it is made (bytes a peer may send us before we read), so
///   what arrives unread can never exceed it. Windows take at most half the
///   budget (`receiveShare`); a connection made when that half is busy gets
///   a smaller window, and none below `minimumReceiveWindow` (the
///   connection is refused with `memoryBudgetExhausted`).
/// - send buffers, the other half (`sendShare`): every write reserves its
///   bytes before it copies them (written, not yet acknowledged by QUIC or
///   handed to TLS over TCP). A write that would pass the send share waits
///   until other streams free memory (backpressure). A stream whose send
///   buffer makes no progress for `PeerLimits.stalledStreamTimeout` is
///   reset, which frees it.
///
/// The halves are separate so that peers filling send buffers can never
/// starve a new connection of its window, nor windows starve writers.
///
/// Freed send copies are kept for reuse (`copies`), on top of the limit:
/// at most 1/16 of the send share and 32 MiB, and only while some send copy
/// is in flight; none once every copy is acknowledged.
///
/// Frames in hand, bytes read out of a stream and not yet done with (a
/// frame being assembled, the frame its handler holds while it answers),
/// are bounded per connection by its `FrameAllowance`: its receive window,
/// or one frame when a frame is larger. They are counted here (`used`,
/// `peak`, `inHand`) but not held back here, so that one connection's
/// frames can never make another connection wait; they come on top of
/// the limit, at most one receive window (or one frame) per connection.
///
/// One exception, bounded: a QUIC post-copy primary answers fault reads on
/// its loop thread without waiting; those answers are counted but not held
/// back, at most `streamSendBuffer` per lazy mirror's read stream.
public final class MemoryBudget: Sendable {
    /// The most bytes held at once.
    public let limit: Int
    private let state = Locked(State())

    private struct State {
        var sending = 0
        var inHand = 0
        var used: Int { sending + receiveReserved + inHand }
        var peak = 0
        var waiters: [ObjectIdentifier: @Sendable () -> Void] = [:]
        var streamsResetForStall: UInt64 = 0
        var receiveReserved = 0
    }

    /// The part of the budget receive windows may take; the rest is left to
    /// send buffers, so writers always have room to make progress.
    public var receiveShare: Int { limit / 2 }
    /// The part of the budget send buffers may take.
    public var sendShare: Int { limit - receiveShare }
    /// The smallest receive window a connection is given (64 KiB still
    /// moves ~25 MB/s at 2.5 ms RTT).
    public static let minimumReceiveWindow = 64 << 10

    /// Default: 1/8 of physical memory, at least 64 MiB and at most 4 GiB.
    /// A replication peer shares its host with the service whose memory it
    /// copies, so it takes a small slice; 4 GiB gives the full default
    /// window (128 MiB) to 8 connections and smaller ones to about 200
    /// more, and 64 MiB still gives a connection a 4 MiB window.
    public static func defaultLimit(physicalMemory: UInt64 = ProcessInfo.processInfo.physicalMemory) -> Int {
        Int(min(max(physicalMemory / 8, UInt64(minimumDefaultLimit)), UInt64(maximumDefaultLimit)))
    }

    /// The default's lower bound (`defaultLimit`).
    public static let minimumDefaultLimit = 64 << 20

    /// The smallest budget accepted: one frame (1 MiB) on each side of a
    /// handful of streams.
    public static let minimumLimit = 4 << 20
    /// The default's upper bound (`defaultLimit`).
    public static let maximumDefaultLimit = 4 << 30

    /// Send copies the transport freed, kept for the next writes.
    package let copies: SendCopyCache
    /// The most bytes `copies` keeps (with the default budget: 32 MiB).
    public static let maximumKeptCopies = 32 << 20

    public init(limit: Int = MemoryBudget.defaultLimit()) {
        precondition(limit >= Self.minimumLimit, "a memory budget must be at least \(Self.minimumLimit) bytes")
        self.limit = limit
        copies = SendCopyCache(limit: min((limit - limit / 2) / 16, Self.maximumKeptCopies))
    }

    /// Bytes held now.
    public var used: Int { state.withLock { $0.used } }
    /// Send bytes held now (written, not yet acknowledged or handed off).
    package var sending: Int { state.withLock { $0.sending } }
    /// The most bytes ever held at once.
    public var peak: Int { state.withLock { $0.peak } }
    /// Streams reset because their peer let their buffers sit undrained.
    public var streamsResetForStall: UInt64 { state.withLock { $0.streamsResetForStall } }

    /// Flow-control windows (stream, connection) no larger than this budget
    /// can cover: a connection's window at most 1/8 of it and a stream's at
    /// most 1/16 (`reserveReceiveWindow` may give a connection less).
    public func clampedWindows(stream: UInt64, connection: UInt64) -> (stream: UInt64, connection: UInt64) {
        let connectionWindow = min(connection, UInt64(limit / 8))
        return (min(stream, UInt64(limit / 16), connectionWindow), connectionWindow)
    }

    /// Reserves a connection's receive window: the largest window
    /// (`largestReceiveWindow`) while at least half the receive share stays
    /// free after it, then 1/32 of the receive share still free, so many
    /// more fit (with the default 3 GiB budget: 128 MiB for each of the
    /// first 6, 24 MiB for the 7th, about 3.9 MiB for the 64th, about
    /// 225 in all); never less than `minimumReceiveWindow`, nil when not
    /// even that is free. Give it back with `releaseReceiveWindow`.
    ///
    /// The first connections all get the same window so that a server can
    /// accept 0-RTT on them: a client sends early data under the windows it
    /// remembers from an earlier connection, and RFC 9000 §7.4.1 forbids
    /// granting less once 0-RTT is accepted (ngtcp2 closes with
    /// PROTOCOL_VIOLATION).
    package func reserveReceiveWindow(wanted: UInt64) -> UInt64? {
        let largest = Int(largestReceiveWindow(wanted: wanted))
        return state.withLock { s in
            let available = receiveShare - s.receiveReserved
            guard available >= Self.minimumReceiveWindow else { return nil }
            let window = available - largest >= receiveShare / 2
                ? largest
                : min(largest, max(available / 32, Self.minimumReceiveWindow))
            s.receiveReserved += window
            s.peak = max(s.peak, s.used)
            return UInt64(window)
        }
    }

    /// The largest window `reserveReceiveWindow(wanted:)` gives: `wanted`,
    /// but at most 1/8 of the budget and 1/8 of the receive share.
    package func largestReceiveWindow(wanted: UInt64) -> UInt64 {
        UInt64(min(Int(clamping: wanted), limit / 8, max(receiveShare / 8, Self.minimumReceiveWindow)))
    }

    package func releaseReceiveWindow(_ window: UInt64) {
        guard window > 0 else { return }
        state.withLock { $0.receiveReserved -= Int(window) }
    }

    /// Takes `count` bytes of the send share if they fit; never waits.
    func tryReserve(_ count: Int) -> Bool {
        state.withLock { s in
            guard s.sending + count <= sendShare else { return false }
            s.sending += count
            s.peak = max(s.peak, s.used)
            return true
        }
    }

    /// Whether `count` bytes of the send share would fit now.
    func hasRoom(for count: Int) -> Bool {
        state.withLock { $0.sending + count <= sendShare }
    }

    /// Charges send bytes that are not held back (the loop thread's own
    /// answers to fault reads).
    func charge(_ count: Int) {
        guard count > 0 else { return }
        state.withLock { s in
            s.sending += count
            s.peak = max(s.peak, s.used)
        }
    }

    /// Returns send bytes and wakes whoever waits for room. Never call it
    /// while holding a stream's lock: a waiter's wake-up takes its own.
    /// The last bytes in flight empty `copies`.
    func release(_ count: Int) {
        guard count > 0 else { return }
        let (wake, idle) = state.withLock { s -> ([@Sendable () -> Void], Bool) in
            s.sending -= count
            assert(s.sending >= 0, "memory budget released more than it charged")
            guard !s.waiters.isEmpty else { return ([], s.sending == 0) }
            defer { s.waiters.removeAll() }
            return (Array(s.waiters.values), s.sending == 0)
        }
        if idle { copies.empty() }
        wake.forEach { $0() }
    }

    /// Calls `wake` once, at the next release (a waiter checks again then).
    func notifyOnRelease(_ key: ObjectIdentifier, _ wake: @escaping @Sendable () -> Void) {
        state.withLock { $0.waiters[key] = wake }
    }

    func cancelNotification(_ key: ObjectIdentifier) {
        state.withLock { _ = $0.waiters.removeValue(forKey: key) }
    }

    /// Bytes of received frames held now (see `FrameAllowance`).
    public var inHand: Int { state.withLock { $0.inHand } }

    func chargeInHand(_ count: Int) {
        guard count > 0 else { return }
        state.withLock { s in
            s.inHand += count
            s.peak = max(s.peak, s.used)
        }
    }

    func releaseInHand(_ count: Int) {
        guard count > 0 else { return }
        state.withLock { s in
            s.inHand -= count
            assert(s.inHand >= 0, "memory budget released more frame bytes than it held")
        }
    }

    package func noteStalledStreamReset() {
        state.withLock { $0.streamsResetForStall += 1 }
    }
}
