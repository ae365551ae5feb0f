/// Hands an object built on the loop thread to the task waiting for it.
///
/// The slot is made by the waiting task and filled under its lock by the
/// loop, so the object's construction is ordered before every use by a
/// lock ThreadSanitizer understands. (Resuming a continuation with the
/// object orders it just as well, but through Swift's concurrency runtime,
/// which ThreadSanitizer cannot see into on Linux.)
package struct Delivery<Value>: @unchecked Sendable {
    private let slot: Locked<Result<Value, any Error>?>
    private let continuation: CheckedContinuation<Void, Never>

    /// Suspends until `register`'s delivery succeeds or fails.
    package static func wait(_ register: (Delivery<Value>) -> Void) async throws -> Value {
        let slot = Locked<Result<Value, any Error>?>(nil)
        await withCheckedContinuation { c in register(Delivery(slot: slot, continuation: c)) }
        return try slot.withLock { $0! }.get()
    }

    package func succeed(_ value: Value) {
        slot.withLock { $0 = .success(value) }
        continuation.resume()
    }

    package func fail(_ error: any Error) {
        slot.withLock { $0 = .failure(error) }
        continuation.resume()
    }
}
