import Foundation

/// A value behind a pthread mutex (NSLock). Used instead of the standard
/// library's `Mutex` because that one is built on raw futexes, which
/// ThreadSanitizer cannot see, so every handoff through it was reported as
/// a race and real races would drown in the noise.
public final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    public init(_ value: Value) { self.value = value }

    @inline(__always)
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
