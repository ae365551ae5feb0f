import MemReplicaSystem
import LinuxShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The thread that moves packets between the two TUN devices. One epoll
/// wait covers both devices and a stop eventfd; its nanosecond timeout
/// (epoll_pwait2) is the next packet's release time, so a delayed packet
/// leaves within the scheduler's wake-up latency, not a millisecond tick.
///
/// @unchecked Sendable: the directions are touched only by the thread;
/// other threads reach `shared` (behind its lock) and the eventfd.
final class WANForwarder: @unchecked Sendable {
    private struct Shared {
        var profiles: (aToB: WANLinkProfile, bToA: WANLinkProfile)
        var generation = 0
        /// The generation the thread has put in force.
        var applied = 0
        var statistics = (aToB: WANDirectionStatistics(), bToA: WANDirectionStatistics())
        var stopping = false
    }

    private let aToB: WANDirection
    private let bToA: WANDirection
    private let epoll: Int32
    private let stopEvent: Int32
    private let shared: Locked<Shared>
    private let finished = DispatchSemaphore(value: 0)
    private let started = Locked(false)
    /// Packets handled per device per turn, so one busy direction cannot
    /// hold back the other's releases for long.
    private static let batch = 64
    private static let stopToken: UInt64 = 0

    init(tunA: Int32, tunB: Int32, aToB profileAB: WANLinkProfile, bToA profileBA: WANLinkProfile, seed: UInt64) throws {
        aToB = WANDirection(input: tunA, output: tunB, profile: profileAB, seed: seed)
        bToA = WANDirection(input: tunB, output: tunA, profile: profileBA, seed: seed ^ 0x5DEE_CE66_D1CE_5EED)
        shared = Locked(Shared(profiles: (profileAB, profileBA)))
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw WANEmulatorError.system(call: "epoll_create1", errno: errno) }
        stopEvent = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard stopEvent >= 0 else {
            let e = errno
            close(epoll)
            throw WANEmulatorError.system(call: "eventfd", errno: e)
        }
        for (fd, token) in [(stopEvent, Self.stopToken), (tunA, 1), (tunB, 2)] {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.u64 = token
            guard epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0 else {
                let e = errno
                close(epoll)
                close(stopEvent)
                throw WANEmulatorError.system(call: "epoll_ctl", errno: e)
            }
        }
    }

    deinit {
        close(epoll)
        close(stopEvent)
    }

    func start() {
        started.withLock { $0 = true }
        let thread = Thread { [self] in
            run()
            finished.signal()
        }
        thread.name = "mrwan-forwarder"
        thread.start()
    }

    /// Stops the thread and waits for it; packets still delayed are dropped.
    func stop() {
        guard started.withLock({ $0 }) else { return }
        let first = shared.withLock { s -> Bool in
            defer { s.stopping = true }
            return !s.stopping
        }
        guard first else { return }
        var one: UInt64 = 1
        _ = write(stopEvent, &one, 8)
        finished.wait()
    }

    /// Returns once the thread applies the profiles, so every packet sent
    /// afterwards meets them (a calibration's first probes would otherwise
    /// race the change).
    func setProfiles(aToB: WANLinkProfile, bToA: WANLinkProfile) {
        let generation = shared.withLock { s -> Int in
            s.profiles = (aToB, bToA)
            s.generation += 1
            return s.generation
        }
        var one: UInt64 = 1
        _ = write(stopEvent, &one, 8)
        guard started.withLock({ $0 }) else { return }
        while shared.withLock({ $0.applied < generation && !$0.stopping }) { usleep(100) }
    }

    var profiles: (aToB: WANLinkProfile, bToA: WANLinkProfile) { shared.withLock { $0.profiles } }

    /// The counters as the thread last published them (once per turn).
    var statistics: (aToB: WANDirectionStatistics, bToA: WANDirectionStatistics) { shared.withLock { $0.statistics } }

    private func run() {
        _ = qs_thread_timer_slack(1)
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: 8)
        defer { events.deallocate() }
        var generation = 0
        while true {
            let now = monotonicNanoseconds()
            aToB.releaseDue(now: now)
            bToA.releaseDue(now: now)
            let change = shared.withLock { s -> (Int, WANLinkProfile, WANLinkProfile)?? in
                s.statistics = (aToB.statistics, bToA.statistics)
                s.applied = generation
                if s.stopping { return .some(nil) }
                return s.generation == generation ? nil : .some((s.generation, s.profiles.aToB, s.profiles.bToA))
            }
            if let change {
                guard let (latest, ab, ba) = change else { return }
                generation = latest
                aToB.apply(ab)
                bToA.apply(ba)
                shared.withLock { $0.applied = latest }
            }
            let deadline: UInt64? = switch (aToB.nextRelease, bToA.nextRelease) {
            case let (a?, b?): min(a, b)
            case let (a, b): a ?? b
            }
            let n: Int32
            if let deadline {
                let now = monotonicNanoseconds()
                if deadline <= now { continue }
                let wait = deadline - now
                var timeout = timespec(tv_sec: Int(wait / 1_000_000_000), tv_nsec: Int(wait % 1_000_000_000))
                n = epoll_pwait2(epoll, events, 8, &timeout, nil)
            } else {
                n = epoll_wait(epoll, events, 8, -1)
            }
            guard n > 0 else { continue }
            for i in 0..<Int(n) {
                switch events[i].data.u64 {
                case Self.stopToken:
                    var value: UInt64 = 0
                    _ = read(stopEvent, &value, 8)
                case 1: _ = aToB.readAvailable(limit: Self.batch)
                default: _ = bToA.readAvailable(limit: Self.batch)
                }
            }
        }
    }
}
