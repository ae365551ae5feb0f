/// An object whose state one loop thread owns (the QUIC and TCP
/// endpoints): other threads reach it only by posting commands.
package protocol CommandLoop: AnyObject, Sendable {
    var commands: EventLoopCommandQueue { get }
}

extension CommandLoop {
    /// Runs `body` on the loop thread.
    package func post(_ body: @escaping @Sendable () -> Void) {
        commands.post(body)
    }

    /// Runs `body` on the loop thread and returns its result.
    package func onLoop<R: Sendable>(_ body: @escaping @Sendable () -> R) async -> R {
        await commands.onLoop(body)
    }
}
