import MemReplicaTransportCore

extension RegionMirror {
    /// A pass spread over lanes (LANES came on the region stream): opens
    /// the `count - 1` lane streams, applies WRITE and PAGES from all of
    /// them as they come, and takes the pass's end from the region stream:
    /// SYNCED for the initial pass (applied here), LANES_END for a later
    /// one. It returns once every lane has ended and every version up to
    /// the end's is applied; the region stream's later frames follow.
    func receivePassOverLanes(main: FrameStream, connection: any TransportConnection, count: Int, token: [UInt8],
                              hasher: ChunkHasher, stream: inout StreamState) async throws {
        var lanes: [FrameStream] = []
        do {
            for index in 1..<count {
                let lane = FrameStream(try await connection.openStream())
                lanes.append(lane)
                try await lane.send(.lane(token: token, index: UInt64(index)))
                try await lane.stream.finish()
            }
        } catch {
            for lane in lanes { await lane.stream.reset(errorCode: ProtocolErrorCode.internalError.rawValue) }
            throw error
        }
        // Up to here versions came in order on the region stream.
        let initial = !stream.synced
        stream.overLanes = true
        stream.contiguousVersion = stream.appliedVersion
        stream.appliedAhead = []
        let all = [main] + lanes
        var end: (version: UInt64, digest: [UInt8])?
        try await withThrowingTaskGroup(of: (Int, Frame?).self) { group in
            for (i, frames) in all.enumerated() { group.addTask { (i, try await frames.receive()) } }
            do {
                while let (i, frame) = try await group.next() {
                    switch frame {
                    case nil where i == 0:
                        throw ReplicationError.streamEnded
                    case nil:
                        continue
                    case .synced(let version, let digest)? where i == 0 && initial:
                        // The region stream waits here until the lanes are done.
                        end = (version, digest)
                        continue
                    case .lanesEnd(let version)? where i == 0 && !initial:
                        end = (version, [])
                        continue
                    case let frame?:
                        try apply(frame, to: &stream)
                    }
                    if stream.unacknowledged
                        && (!all[i].hasBufferedBytes || stream.lastAck.duration(to: .now) >= Self.ackInterval) {
                        try await acknowledge(on: main, stream: &stream)
                    }
                    group.addTask { (i, try await all[i].receive()) }
                }
            } catch {
                // The other lanes' reads end only when their streams do.
                // A violation is answered with ERROR on the region stream,
                // which keeps its sending half for it; anything else (a
                // lane reset, a lane that could not be read) abandons the
                // region stream too, so the primary learns now rather than
                // at its next write.
                let violation = error as? ProtocolViolation
                let code = (violation?.code ?? .internalError).rawValue
                for lane in lanes { await lane.stream.reset(errorCode: code) }
                if violation != nil {
                    await main.stream.stopReading(errorCode: code)
                } else {
                    await main.stream.reset(errorCode: code)
                }
                throw error
            }
        }
        guard let end else { throw ReplicationError.streamEnded }
        guard stream.contiguousVersion == end.version, stream.appliedAhead.isEmpty else {
            throw ProtocolViolation(.unexpectedFrame, "\(initial ? "SYNCED" : "LANES_END") at version \(end.version), but the "
                                    + "lanes brought every version only up to \(stream.contiguousVersion)")
        }
        stream.overLanes = false
        if initial { try applySynced(digest: end.digest, hasher: hasher, to: &stream) }
        if stream.unacknowledged { try await acknowledge(on: main, stream: &stream) }
    }
}
