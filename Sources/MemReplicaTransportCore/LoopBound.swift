/// Something confined to (or owned by) an endpoint's loop thread, that
/// other threads reach by posting work to that loop.
package protocol LoopBound: AnyObject, Sendable {
    /// Runs `body` on the endpoint's loop thread.
    func postToLoop(_ body: @escaping @Sendable () -> Void)
}

extension LoopBound {
    /// Runs `body` on the loop thread and returns its result.
    package func onLoop<R: Sendable>(_ body: @escaping @Sendable () -> R) async -> R {
        await withCheckedContinuation { c in postToLoop { c.resume(returning: body()) } }
    }
}
