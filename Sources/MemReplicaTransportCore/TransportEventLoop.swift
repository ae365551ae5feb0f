/// A transport's event-loop thread, as the layers above may use it: one
/// thread owns each endpoint and its connections, and other threads reach it
/// only by posting work. Transports whose loop can serve requests in the
/// same turn they arrive (QUIC) offer it through `LoopServedStream`.
package protocol TransportEventLoop: AnyObject, Sendable {
    /// Runs `body` on the loop thread, after everything posted before it.
    func post(_ body: @escaping @Sendable () -> Void)
    /// On the loop: calls `handler` on the loop whenever `fd` is readable
    /// (level-triggered: it must read until empty) until it returns false.
    /// Returns the token for `unwatchOnLoop`.
    func watchOnLoop(_ fd: Int32, handler: @escaping () -> Bool) throws -> UInt64
    /// On the loop: stops watching (nothing if already stopped).
    func unwatchOnLoop(_ token: UInt64)
    /// On the loop, as an answer goes out whose next request is likely
    /// within µs (a post-copy fault's DATA): poll a short, configured
    /// window instead of sleeping.
    func keepPollingForRequests()
    /// On the loop, as a request goes out whose answer is due within µs (a
    /// fault's READ): poll for it, at most the same window.
    func pollForAnswers()
    /// On the loop, once every answer this side awaited has arrived: end
    /// `pollForAnswers`'s window, so the loop sleeps and leaves the CPU to
    /// the thread the answer woke (a faulting thread, on a two-core host).
    func answersArrived()
}
