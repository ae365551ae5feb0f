import MemReplicaSystem
import MemReplicaTransportCore
/// Handles a stream's received bytes on the endpoint's loop thread, where an
/// answer can be queued and sent in the same loop turn. A request/response
/// exchange through a task crosses threads four times (loop → reader task →
/// loop, on each side); each crossing is a wake-up costing tens of µs on a
/// VM, far more than the work. Post-copy fault reads use this.
///
/// Everything a reader does runs on the loop: it must not block, and it
/// owns no thread of its own. Sendable only to be handed to the loop; it is
/// touched there alone.
package protocol LoopStreamReader: AnyObject, Sendable {
    /// Bytes arrived (take them with `takeOnLoop`), the stream ended
    /// (`receivedAllOnLoop`), or send room freed up after `waitForSendRoom`.
    /// The reader ends itself with `endLoopReading`.
    func streamReadable(_ stream: QUICStreamCore)
}

extension QUICStream {
    /// Hands this stream's reading to `reader` on the loop thread and waits
    /// until it ends: returns at a clean end, throws the reader's error or
    /// the stream's. A reset of the stream (`reset`) ends the wait too.
    package func readOnLoop(_ reader: any LoopStreamReader) async throws {
        let core = self.core
        try await Delivery<Void>.wait { done in
            core.connection.endpoint.post { core.startLoopReading(reader, done: done) }
        }
    }
}
