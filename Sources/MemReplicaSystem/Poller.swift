import LinuxShim
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// epoll for a transport's loop thread: its sockets, each registered under a
/// token of the caller's choosing, and an eventfd that other threads use to
/// wake the loop (drained here, never handed to the caller). The QUIC and
/// TCP endpoints both run on it. Deadlines become the wait's timeout via epoll_pwait2:
/// nanosecond resolution, which packet pacing needs (epoll_wait's
/// milliseconds are too coarse), and no timer is armed unless the loop
/// really sleeps: a timerfd re-armed every turn costs syscalls on every
/// turn, a visible share of CPU in bulk transfers (figure in
/// bench/RESULTS.md, "Figures behind design choices").
package final class Poller {
    private let epoll: FileDescriptor
    private let wakeFD: FileDescriptor
    /// Reserved for the wake-up eventfd.
    static let wakeToken: UInt64 = 0

    package init() throws {
        let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard ep >= 0 else { throw SystemCallError(call: "epoll_create1", errno: errno) }
        epoll = FileDescriptor(rawValue: ep)
        let ev = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard ev >= 0 else {
            try? epoll.close()
            throw SystemCallError(call: "eventfd", errno: errno)
        }
        wakeFD = FileDescriptor(rawValue: ev)
        try add(ev, token: Self.wakeToken, events: EPOLLIN.rawValue)
    }

    /// Registers `fd` under `token` (not `wakeToken`).
    package func add(_ fd: Int32, token: UInt64, events: UInt32) throws {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = token
        guard epoll_ctl(epoll.rawValue, EPOLL_CTL_ADD, fd, &ev) == 0 else {
            throw SystemCallError(call: "epoll_ctl", errno: errno)
        }
    }

    package func modify(_ fd: Int32, token: UInt64, events: UInt32) {
        var ev = epoll_event()
        ev.events = events
        ev.data.u64 = token
        _ = epoll_ctl(epoll.rawValue, EPOLL_CTL_MOD, fd, &ev)
    }

    package func remove(_ fd: Int32) {
        _ = epoll_ctl(epoll.rawValue, EPOLL_CTL_DEL, fd, nil)
    }

    /// Waits for events until `deadline` (CLOCK_MONOTONIC nanoseconds;
    /// UInt64.max waits without limit, a past deadline only polls) and calls
    /// `body` with each ready socket's token and events.
    package func wait(until deadline: UInt64, _ body: (UInt64, UInt32) -> Void) {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        let n: Int32
        if deadline == UInt64.max {
            n = epoll_wait(epoll.rawValue, &events, Int32(events.count), -1)
        } else {
            let now = monotonicNanoseconds()
            let wait = deadline > now ? deadline - now : 0
            var timeout = timespec(tv_sec: Int(wait / 1_000_000_000), tv_nsec: Int(wait % 1_000_000_000))
            n = epoll_pwait2(epoll.rawValue, &events, Int32(events.count), &timeout, nil)
        }
        guard n > 0 else { return }
        for i in 0..<Int(n) {
            if events[i].data.u64 == Self.wakeToken {
                var value: UInt64 = 0
                _ = Glibc.read(wakeFD.rawValue, &value, 8)
            } else {
                body(events[i].data.u64, events[i].events)
            }
        }
    }

    /// Spins on a zero-timeout epoll for up to `nanoseconds`; true as soon
    /// as something is ready (the caller then handles it without sleeping).
    /// Between peeks it yields: a thread woken on this core (a faulting
    /// thread whose page just arrived) runs at once instead of waiting for
    /// the scheduler to preempt the spinner. That matters most when a few
    /// cores carry both peers and the faulting thread: without the yield
    /// the post-copy fault tail grows several-fold (figures in
    /// bench/RESULTS.md, "Figures behind design choices").
    package func poll(forNanoseconds nanoseconds: UInt64) -> Bool {
        let end = monotonicNanoseconds() + nanoseconds
        var event = epoll_event()
        repeat {
            // Level-triggered: peeking leaves the event for the real wait.
            if epoll_wait(epoll.rawValue, &event, 1, 0) > 0 { return true }
            sched_yield()
        } while monotonicNanoseconds() < end
        return false
    }

    package func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD.rawValue, &one, 8)
    }

    deinit {
        try? epoll.close()
        try? wakeFD.close()
    }
}

/// ngtcp2 timestamps: CLOCK_MONOTONIC in nanoseconds.
@inline(__always)
package func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
