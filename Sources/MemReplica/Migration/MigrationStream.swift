import MemReplicaTransportCore

/// The source's end of a migration stream: frames with a deadline (a
/// stream read does not end on cancellation, so a deadline that passes
/// resets the stream, which ends the read).
struct MigrationStream {
    let frames: FrameStream

    struct DeadlinePassed: Error {}

    func send(_ frame: Frame) async throws {
        try await frames.send(frame)
    }

    /// The next frame; an ERROR frame is thrown as `ReplicationError.refusedByPeer`.
    func receive(before deadline: ContinuousClock.Instant) async throws -> Frame {
        let frames = self.frames
        let frame = try await withThrowingTaskGroup(of: Frame?.self) { group in
            group.addTask { try await frames.receive() }
            group.addTask {
                try await Task.sleep(until: deadline, clock: .continuous)
                await frames.stream.reset(errorCode: ProtocolErrorCode.migrationAborted.rawValue)
                throw DeadlinePassed()
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        switch frame {
        case .error(let code, let message)?:
            throw ReplicationError.refusedByPeer(code: code, message: message)
        case let frame?:
            return frame
        case nil:
            throw ReplicationError.streamEnded
        }
    }

    func abort(_ reason: String) async {
        await frames.fail(ProtocolViolation(.migrationAborted, reason))
    }
}
