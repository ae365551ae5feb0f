import Foundation

/// A value behind a pthread mutex (NSLock). Used instead of the standard
/// library's `Mutex` because that one is built on raw futexes, which
/// ThreadSanitizer cannot see, so every handoff through it was reported as
/// a race and real races would drown in the noise.
///
/// Inlinable so each module specializes it for its own values: an
/// unspecialized call looks up generic metadata on every lock, and the
/// transport's loop takes several locks per packet.
public final class Locked<Value>: @unchecked Sendable {
    @usableFromInline let lock = NSLock()
    @usableFromInline var value: Value

    public init(_ value: Value) { self.value = value }

    @inlinable
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
