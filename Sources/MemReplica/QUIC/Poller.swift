import QuicShim
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// epoll over the UDP socket, an eventfd that other threads use to wake the
/// loop, and a timerfd for ngtcp2's expiry (nanosecond resolution, which
/// packet pacing needs; epoll_wait's millisecond timeout is too coarse).
final class Poller {
    private let epoll: FileDescriptor
    let wakeFD: FileDescriptor
    let timerFD: FileDescriptor

    enum Token: UInt64 { case socket = 1, wake = 2, timer = 3 }

    init() throws {
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard ep >= 0 else { throw TransportError.system(call: "epoll_create1", errno: errno) }
        epoll = FileDescriptor(rawValue: ep)
        let ev = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard ev >= 0 else { throw TransportError.system(call: "eventfd", errno: errno) }
        wakeFD = FileDescriptor(rawValue: ev)
        let tf = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        guard tf >= 0 else { throw TransportError.system(call: "timerfd_create", errno: errno) }
        timerFD = FileDescriptor(rawValue: tf)
        try add(wakeFD, .wake, events: EPOLLIN.rawValue)
        try add(timerFD, .timer, events: EPOLLIN.rawValue)
    }

    func add(_ fd: FileDescriptor, _ token: Token, events: UInt32) throws {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = token.rawValue
        guard epoll_ctl(epoll.rawValue, EPOLL_CTL_ADD, fd.rawValue, &ev) == 0 else {
            throw TransportError.system(call: "epoll_ctl", errno: errno)
        }
    }

    func modify(_ fd: FileDescriptor, _ token: Token, events: UInt32) {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = token.rawValue
        _ = epoll_ctl(epoll.rawValue, EPOLL_CTL_MOD, fd.rawValue, &ev)
    }

    /// Waits for events; `block` false polls without sleeping.
    func wait(block: Bool, _ body: (Token, UInt32) -> Void) {
        var events = [epoll_event](repeating: epoll_event(), count: 8)
        let n = epoll_wait(epoll.rawValue, &events, Int32(events.count), block ? -1 : 0)
        guard n > 0 else { return }
        for i in 0..<Int(n) {
            if let token = Token(rawValue: events[i].data.u64) { body(token, events[i].events) }
        }
    }

    func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD.rawValue, &one, 8)
    }

    func drainWake() {
        var value: UInt64 = 0
        _ = Glibc.read(wakeFD.rawValue, &value, 8)
    }

    /// Arms the timer for an absolute CLOCK_MONOTONIC time in nanoseconds;
    /// UInt64.max disarms it.
    func armTimer(atNanoseconds deadline: UInt64) {
        var spec = itimerspec()
        if deadline != UInt64.max {
            let d = max(deadline, 1)
            spec.it_value.tv_sec = Int(d / 1_000_000_000)
            spec.it_value.tv_nsec = Int(d % 1_000_000_000)
        }
        _ = timerfd_settime(timerFD.rawValue, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    func drainTimer() {
        var value: UInt64 = 0
        _ = Glibc.read(timerFD.rawValue, &value, 8)
    }

    deinit {
        try? epoll.close()
        try? wakeFD.close()
        try? timerFD.close()
    }
}

/// ngtcp2 timestamps: CLOCK_MONOTONIC in nanoseconds.
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
