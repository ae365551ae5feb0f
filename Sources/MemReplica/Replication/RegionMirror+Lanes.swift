import MemReplicaTransportCore

extension RegionMirror {
    /// The initial pass spread over lanes (LANES was the primary's first
    /// frame): opens the `count - 1` lane streams, applies WRITE and PAGES
    /// from all of them as they come, and applies SYNCED, which comes on
    /// the region stream, once every lane has ended and every version up
    /// to SYNCED's is applied. Later frames come on the region stream only.
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
        stream.overLanes = true
        let all = [main] + lanes
        var synced: (version: UInt64, digest: [UInt8])?
        try await withThrowingTaskGroup(of: (Int, Frame?).self) { group in
            for (i, frames) in all.enumerated() { group.addTask { (i, try await frames.receive()) } }
            do {
                while let (i, frame) = try await group.next() {
                    switch frame {
                    case nil where i == 0:
                        throw ReplicationError.streamEnded
                    case nil:
                        continue
                    case .synced(let version, let digest)? where i == 0:
                        // The region stream waits here until the lanes are done.
                        synced = (version, digest)
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
                // The other lanes' reads end only when their streams do;
                // the region stream keeps its sending half for an ERROR.
                let code = ((error as? ProtocolViolation)?.code ?? .internalError).rawValue
                for lane in lanes { await lane.stream.reset(errorCode: code) }
                await main.stream.stopReading(errorCode: code)
                throw error
            }
        }
        guard let synced else { throw ReplicationError.streamEnded }
        guard stream.contiguousVersion == synced.version, stream.appliedAhead.isEmpty else {
            throw ProtocolViolation(.unexpectedFrame, "SYNCED at version \(synced.version), but the lanes brought every "
                                    + "version only up to \(stream.contiguousVersion)")
        }
        stream.overLanes = false
        try applySynced(digest: synced.digest, hasher: hasher, to: &stream)
        if stream.unacknowledged { try await acknowledge(on: main, stream: &stream) }
    }
}
