/// A stream as its transport's loop thread sees it, for a `LoopStreamReader`.
/// Every member is for the loop thread only; the reference itself may be
/// handed to other threads, to post work that uses it.
package protocol LoopStream: AnyObject, Sendable {
    /// The loop that owns this stream.
    var loop: any TransportEventLoop { get }
    /// Up to `maxLength` received bytes, or nil when none are buffered.
    func takeOnLoop(maxLength: Int) -> [UInt8]?
    /// The peer finished and every byte was taken.
    var receivedAllOnLoop: Bool { get }
    /// Queues owned memory (from `OwnedBytes`); it goes out in this loop
    /// turn and is freed once acknowledged.
    func sendOnLoop(_ memory: UnsafeMutableRawBufferPointer) throws
    /// More than the stream's send buffer waits for acknowledgment: answer
    /// no more until `waitForSendRoom` calls back.
    var sendBacklogged: Bool { get }
    /// Calls the reader again once acknowledgments make room.
    func waitForSendRoom()
    /// Ends the reader's turn: the waiting `readOnLoop` returns, or throws
    /// `error`.
    func endLoopReading(_ error: (any Error)?)
}

/// Handles a stream's received bytes on the transport's loop thread, where
/// an answer can be queued and sent in the same loop turn. A
/// request/response exchange through a task crosses threads four times
/// (loop → reader task → loop, on each side), each a wake-up far dearer
/// than the work. Post-copy fault reads use this.
///
/// Everything a reader does runs on the loop: it must not block, and it
/// owns no thread of its own. Sendable only to be handed to the loop; it is
/// touched there alone.
package protocol LoopStreamReader: AnyObject, Sendable {
    /// Bytes arrived (take them with `takeOnLoop`), the stream ended
    /// (`receivedAllOnLoop`), or send room freed up after `waitForSendRoom`.
    /// The reader ends itself with `endLoopReading`.
    func streamReadable(_ stream: any LoopStream)
}

/// The capability of a stream whose reading can be handed to its
/// transport's loop thread (QUIC has it; TCP streams are read by tasks).
package protocol LoopServedStream: TransportStream {
    /// The stream as its loop sees it.
    var onLoop: any LoopStream { get }
    /// Hands this stream's reading to `reader` on the loop thread and waits
    /// until it ends: returns at a clean end, throws the reader's error or
    /// the stream's. A reset of the stream ends the wait too.
    func readOnLoop(_ reader: any LoopStreamReader) async throws
}

/// The capability of a transport that can carry a client's first request
/// in its handshake (QUIC 0-RTT with a session ticket at hand).
package protocol EarlyDataTransport: Transport {
    /// Connects and sends `replaySafeEarlyData` (it must be safe to replay)
    /// on a first stream, early when a ticket allows, else once connected.
    func connect(to address: PeerAddress, replaySafeEarlyData: [UInt8]) async throws
        -> (connection: any TransportConnection, stream: any TransportStream)
}
