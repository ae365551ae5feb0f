import MemReplicaSystem

/// A transport's stream core (`QUICStreamCore`, `TCPStreamCore`) as the
/// shared stream machinery sees it: its `StreamCoreState`, and the few
/// things only the transport does, on its endpoint's loop thread. The
/// extension below is what a stream handle's `write`, `finish` and `read`
/// run, the same for every transport.
package protocol StreamCore: LoopBound {
    var state: StreamCoreState { get }
    /// What readers of the stream's connection may hold of what they read.
    var frameAllowance: FrameAllowance? { get }
    /// Loop thread: moves what tasks wrote into the transport's send queue.
    func drainMailbox()
    /// Loop thread: opens the stream's and connection's windows by what
    /// readers took since the last time.
    func returnCredit()
    /// Loop thread: returns every stream's outstanding credit on the connection.
    func returnConnectionCredit()
    /// Loop thread: `TransportStream.prioritize`.
    func prioritizeLocally()
    /// Loop thread: `TransportStream.stopReading`.
    func stopReadingLocally(code: UInt64)
    /// Loop thread: `TransportStream.reset`.
    func resetLocally(code: UInt64)
    /// Loop thread: ends both directions with `error`, waking everyone waiting.
    func fail(_ error: TransportError)
    /// Loop thread: `TransportStream.sendRate`.
    func sendRateNow() -> Double?
}

extension StreamCore {
    package var id: Int64 { state.id }

    // Each write reserves its bytes in the memory budget (waiting for room)
    // before it copies them: the copy is what the budget counts.
    package func write(_ bytes: [UInt8]) async throws {
        guard !bytes.isEmpty else { return }
        try await state.reserve(bytes.count)
        try enqueue(bytes.withUnsafeBytes(state.budget.copies.copy))
    }

    package func write(_ bytes: UnsafeRawBufferPointer) async throws {
        guard bytes.count > 0 else { return }
        try await state.reserve(bytes.count)
        try enqueue(state.budget.copies.copy(bytes))
    }

    package func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer) async throws {
        guard header.count + body.count > 0 else { return }
        try await state.reserve(header.count + body.count)
        try enqueue(state.budget.copies.copy(header: header, body: body))
    }

    package func write(_ header: [UInt8], followedBy body: UnsafeRawBufferPointer,
                       checkingCopy check: () throws -> Void) async throws {
        let count = header.count + body.count
        guard count > 0 else { return }
        try await state.reserve(count)
        let copy = state.budget.copies.copy(header: header, body: body)
        do {
            try check()
        } catch {
            copy.deallocate()
            state.cancelReservation(count)
            throw error
        }
        try enqueue(copy)
    }

    /// Queues owned memory that `reserve` made room for; never waits.
    package func enqueue(_ memory: UnsafeMutableRawBufferPointer) throws {
        if try state.enqueue(memory) { postToLoop { [self] in drainMailbox() } }
    }

    package func finish() throws {
        if try state.requestFinish() { postToLoop { [self] in drainMailbox() } }
    }

    package func read(maxLength: Int) async throws -> [UInt8]? {
        precondition(maxLength > 0, "maxLength must be positive")
        let state = self.state
        switch state.readNow(maxLength: maxLength) {
        case .bytes(let bytes, let postCredit):
            let sweep = state.shared.noteCreditTaken(bytes.count)
            if sweep || postCredit { postToLoop { [self] in giveCreditBack(sweep: sweep) } }
            return bytes
        case .end: return nil
        case .fail(let error): throw error
        case .wait:
            return try await withCheckedThrowingContinuation { c in
                guard let ready = state.waitForBytes(maxLength: maxLength, c) else { return }
                let sweep: Bool
                if case .success(let bytes?) = ready { sweep = state.shared.noteCreditTaken(bytes.count) } else { sweep = false }
                postToLoop { [self] in giveCreditBack(sweep: sweep) }
                c.resume(with: ready)
            }
        }
    }

    package func prioritize() async { await onLoop { [self] in prioritizeLocally() } }

    package func stopReading(errorCode: UInt64) async { await onLoop { [self] in stopReadingLocally(code: errorCode) } }

    package func reset(errorCode: UInt64) async { await onLoop { [self] in resetLocally(code: errorCode) } }

    /// Loop thread: this stream's credit, then, when a reader's take claimed
    /// it (`noteCreditTaken`), the connection's sweep. Both, always: a
    /// claimed sweep that does not run is never posted again (credit left
    /// on many streams, each under its own threshold, closed the window for
    /// good), and the sweep visits only streams the connection still lists
    /// (one that ended is not, and its last credit would stay unreturned).
    private func giveCreditBack(sweep: Bool) {
        returnCredit()
        if sweep { returnConnectionCredit() }
    }

    /// Loop thread: hands what arrived to a waiting reading task.
    package func wakeWaitingReader() {
        guard let (continuation, out) = state.handOffToWaitingReader() else { return }
        continuation.resume(returning: out)
        if let out { giveCreditBack(sweep: state.shared.noteCreditTaken(out.count)) }
    }

    /// Loop thread: up to `maxLength` received bytes, their credit given
    /// back at once (for readers on the loop itself).
    package func takeOnLoop(maxLength: Int) -> [UInt8]? {
        guard let taken = state.takeOnLoop(maxLength: maxLength) else { return nil }
        giveCreditBack(sweep: taken.sweep)
        return taken.bytes
    }
}
