import MemReplicaSystem
import MemReplicaTransportCore
import DequeModule

/// The reads streams of a lazy replica: READs for faulted chunks (as they
/// come in) and for the background pull (a window's worth in flight), and
/// the DATA that answers them, installed into the mapping or held and
/// retried when an install fails.
extension PostCopyMirror {
    /// Sends READs for faults from any thread: the loop queues each and its
    /// READ in one step, so the queue's order is the stream's. A stream
    /// that can no longer send means the run is ending; the next run asks
    /// again for whatever still waits.
    static func requester(on stream: any LoopStream, queue: Locked<Deque<FaultRequest>>) -> FaultRequester {
        { due, loop in
            let send: @Sendable () -> Void = {
                for request in due {
                    queue.withLock { $0.append(request) }
                    guard let frame = try? Frame.read(firstChunk: UInt64(request.chunk), count: 1).encoded(),
                          (try? stream.sendOnLoop(frame.withUnsafeBytes(OwnedBytes.copy))) != nil else { return }
                }
                stream.loop.pollForAnswers()
            }
            // On this connection's loop (a fault read there, or DATA that
            // must be asked again) the READ leaves in this turn's writes.
            // Any other thread, or another endpoint's loop still watching
            // the faults for a moment after a reconnect, posts.
            let owner = stream.loop
            if loop == ObjectIdentifier(owner) { send() } else { owner.post(send) }
        }
    }

    /// Asks for every faulted chunk not asked for on this connection yet.
    func requestWaitingFaults(onLoop loop: ObjectIdentifier? = nil) {
        let (due, requester, wake) = state.withLock { s -> ([FaultRequest], FaultRequester?, AsyncStream<Void>.Continuation?) in
            guard let requester = s.faultRequester else { return ([], nil, s.wakeFaultRequests) }
            return (s.chunks.takeFaultRequests(), requester, nil)
        }
        if !due.isEmpty { requester?(due, loop) }
        wake?.yield()
    }

    /// One READ per faulted chunk, as faults come in.
    func requestFaults(on frames: FrameStream, queue: Locked<Deque<FaultRequest>>,
                               signals: AsyncStream<Void>) async throws {
        for await _ in signals {
            let due = state.withLock { $0.chunks.takeFaultRequests() }
            for request in due {
                queue.withLock { $0.append(request) }
                try await frames.send(.read(firstChunk: UInt64(request.chunk), count: 1))
            }
        }
    }

    /// Background READs of runs of missing chunks, a window's worth in flight.
    func pull(on frames: FrameStream, queue: Locked<Deque<FaultRequest>>,
                      signals: AsyncStream<Void>) async throws {
        let chunkSize = region.geometry.chunkSize
        let window = max(1, options.pullWindowBytes / chunkSize)
        let batch = max(1, min(Int(FrameLimits.maxReadChunks), options.pullBatchBytes / chunkSize))
        var wakeups = signals.makeAsyncIterator()
        while !Task.isCancelled {
            let room = window - queue.withLock { $0.count }
            // Not before SYNCED: by then the primary has named in DIRTY each
            // chunk held from an earlier connection that changed, and tracks
            // every later write, so a chunk pulled from here on is never
            // dropped by that DIRTY and pulled twice.
            if room > 0, let run = state.withLock({ $0.subscribed ? $0.chunks.takePullRun(limit: min(batch, room)) : nil }) {
                queue.withLock { $0.append(contentsOf: run) }
                try await frames.send(.read(firstChunk: UInt64(run[0].chunk), count: UInt64(run.count)))
                continue
            }
            guard await wakeups.next() != nil else { return }
        }
    }

    /// DATA, in the order READs were sent on this stream.
    func receiveChunks(on frames: FrameStream, queue: Locked<Deque<FaultRequest>>,
                               forFaults: Bool, onEach: AsyncStream<Void>.Continuation?) async throws {
        while let frame = try await frames.receive() {
            if try accept(frame, queue: queue, forFaults: forFaults) { requestWaitingFaults() }
            onEach?.yield()
        }
        throw ReplicationError.streamEnded
    }

    /// Checks that a frame on a reads stream is the DATA asked for next and
    /// installs it, unless it is stale or the chunk is present. True when a
    /// fault waiting on that chunk must ask again (the bytes predate a DIRTY).
    func accept(_ frame: Frame, queue: Locked<Deque<FaultRequest>>, forFaults: Bool) throws -> Bool {
        guard case .data(let first, let bytes) = frame else {
            throw ProtocolViolation(.unexpectedFrame, "a reads stream answers with DATA only")
        }
        guard let expected = queue.withLock({ $0.popFirst() }), UInt64(expected.chunk) == first else {
            throw ProtocolViolation(.unexpectedFrame, "DATA for chunk \(first) that was not asked for next")
        }
        guard bytes.count == region.geometry.byteRange(ofChunk: expected.chunk)!.count else {
            throw ProtocolViolation(.malformedFrame, "DATA for chunk \(first) carries \(bytes.count) bytes")
        }
        return state.withLock { s -> Bool in
            switch s.chunks.arrived(expected.chunk, askedAt: expected.generation, forFault: forFaults) {
            case .stale:
                return s.chunks.waiting[expected.chunk] != nil
            case .alreadyPresent:
                break
            case .held:
                return false
            case .install:
                do {
                    try bytes.withUnsafeBytes { try faults.install(chunk: expected.chunk, bytes: $0) }
                } catch {
                    // No memory, or the tmpfs is full: keep the bytes and
                    // retry; whoever waits keeps waiting (never on a hole).
                    s.chunks.installFailed(expected.chunk)
                    s.retries[expected.chunk] = (bytes, expected.generation, .now)
                    s.installError = "\(error)"
                    s.wakeRetries?.yield()
                    return false
                }
            }
            s.noteInstalled(expected.chunk)
            return false
        }
    }

    /// Installs held chunks again, backing off from 10 ms to 1 s while none
    /// succeeds; ends with the run.
    func retryInstalls(signals: AsyncStream<Void>) async {
        var wakeups = signals.makeAsyncIterator()
        var delay = Duration.milliseconds(10)
        while !Task.isCancelled {
            guard state.withLock({ !$0.retries.isEmpty }) else {
                guard await wakeups.next() != nil else { return }
                delay = .milliseconds(10)
                continue
            }
            do { try await Task.sleep(for: delay) } catch { return }
            let installed = state.withLock { s -> Int in
                var done = 0
                for (chunk, held) in s.retries {
                    guard s.chunks.mayInstallHeld(chunk, generation: held.generation) else {
                        s.retries.removeValue(forKey: chunk)
                        continue
                    }
                    do {
                        try held.bytes.withUnsafeBytes { try faults.install(chunk: chunk, bytes: $0) }
                    } catch {
                        s.installError = "\(error)"
                        continue
                    }
                    s.retries.removeValue(forKey: chunk)
                    s.noteInstalled(chunk)
                    done += 1
                }
                return done
            }
            delay = installed > 0 ? .milliseconds(10) : min(delay * 2, .seconds(1))
        }
    }
}
