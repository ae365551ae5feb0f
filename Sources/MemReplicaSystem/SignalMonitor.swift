import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Catches SIGINT/SIGTERM so shutdown runs as ordinary Swift code (closing
/// connections, removing the socket) instead of inside a signal handler,
/// where almost nothing is safe to call. A repeated signal means the person
/// is done waiting: `onRepeat` runs for it (typically an immediate exit).
///
/// @unchecked Sendable: `sources` is written once in `init` and only
/// cancelled in `deinit`; Dispatch sources are thread-safe.
public final class SignalMonitor: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]
    private let state = Locked(State())

    private struct State {
        var first: Int32?
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    public init(_ numbers: [Int32] = [SIGINT, SIGTERM], onRepeat: @escaping @Sendable (Int32) -> Void) {
        let queue = DispatchQueue(label: "memreplica.signals")
        var sources: [any DispatchSourceSignal] = []
        for number in numbers {
            // The default action would end the process before Dispatch sees the signal.
            signal(number, SIG_IGN)
            sources.append(DispatchSource.makeSignalSource(signal: number, queue: queue))
        }
        self.sources = sources
        for (number, source) in zip(numbers, sources) {
            source.setEventHandler { [weak self] in self?.deliver(number, onRepeat: onRepeat) }
            source.resume()
        }
    }

    deinit {
        for source in sources { source.cancel() }
    }

    /// The first signal received, waiting for it if none has come yet.
    public func wait() async -> Int32 {
        await withCheckedContinuation { c in
            let ready = state.withLock { s -> Int32? in
                if let first = s.first { return first }
                s.waiters.append(c)
                return nil
            }
            if let ready { c.resume(returning: ready) }
        }
    }

    private func deliver(_ number: Int32, onRepeat: @Sendable (Int32) -> Void) {
        let waiters = state.withLock { s -> [CheckedContinuation<Int32, Never>]? in
            guard s.first == nil else { return nil }
            s.first = number
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        guard let waiters else { return onRepeat(number) }
        for w in waiters { w.resume(returning: number) }
    }

    public static func name(of number: Int32) -> String {
        switch number {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(number)"
        }
    }
}
