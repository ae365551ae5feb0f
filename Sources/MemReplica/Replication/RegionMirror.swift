import Foundation
/// The replica side of one region: subscribes on a stream of its own,
/// applies every WRITE into the local mapping, and acknowledges versions.
public final class RegionMirror: @unchecked Sendable {
    public let region: Region
    /// The region's name on the exporting peer.
    public let remoteName: String
    private let progress = Locked(Progress())

    public struct Progress: Sendable, Equatable {
        /// Chunks received at least once on this subscription.
        public var chunksPresent = 0
        /// The primary's initial pass is complete: the replica held or got
        /// every chunk.
        public var synced = false
        public var chunksApplied = 0
        public var lastAppliedVersion: UInt64 = 0
    }

    /// False when the local region was just created: its content is known
    /// to be zeros, nothing to offer for a resume, so hashing it is skipped.
    public let offersHeldChunks: Bool

    public init(region: Region, remoteName: String? = nil, offersHeldChunks: Bool = true) {
        self.region = region
        self.remoteName = remoteName ?? region.name
        self.offersHeldChunks = offersHeldChunks
    }

    public var currentProgress: Progress { progress.withLock { $0 } }
    public var initialSyncComplete: Bool { currentProgress.synced }

    /// A new replica receives every chunk: allocate its pages on a thread of
    /// their own while the first chunks are on their way, so the receive
    /// path copies into memory that is already there.
    private func prefaultAhead() {
        let region = self.region
        let step = 64 << 20
        let thread = Thread {
            for start in stride(from: 0, to: region.geometry.size, by: step) {
                guard region.populate(start..<min(start + step, region.geometry.size)) else { return }
            }
        }
        thread.name = "prefault \(region.name)"
        thread.start()
    }

    /// Mirrors until the connection or stream ends; throws why.
    public func run(over connection: any TransportConnection) async throws {
        let frames = FrameStream(try await connection.openStream())
        let g = region.geometry
        // What we hold already (zeros for a new file): the primary sends
        // only chunks that differ, as rsync does.
        let held = offersHeldChunks ? (0..<g.chunkCount).map { ChunkHashScanner.hash(region, chunk: $0) } : []
        // Hashes of pages our file could not provide are no offer.
        try region.checkBacking()
        do {
            try await frames.send(.subscribe(.init(name: remoteName, size: UInt64(g.size), chunkSize: UInt64(g.chunkSize),
                                                   mode: .eager, hashedChunks: UInt64(held.count))))
            for start in stride(from: 0, to: held.count, by: FrameLimits.maxHashesPerFrame) {
                let part = Array(held[start..<min(start + FrameLimits.maxHashesPerFrame, held.count)])
                try await frames.send(.have(firstChunk: UInt64(start), hashes: part))
            }
        } catch TransportError.streamReset(let code) {
            // Refused while we were still sending hashes: the ERROR frame
            // saying why is waiting to be read.
            if case .error(let code, let message)? = try? await frames.receive() {
                throw ReplicationError.refusedByPeer(code: code, message: message)
            }
            throw TransportError.streamReset(errorCode: code)
        }
        if !offersHeldChunks { prefaultAhead() }
        var versions = [UInt64](repeating: 0, count: g.chunkCount)
        var unacknowledged = false
        do {
            while let frame = try await frames.receive() {
                switch frame {
                case .write(let chunk, let version, let bytes):
                    guard chunk < UInt64(g.chunkCount) else {
                        throw ProtocolViolation(.chunkOutOfRange, "chunk \(chunk) of a \(g.chunkCount)-chunk region")
                    }
                    let index = Int(chunk)
                    guard version > versions[index] else {
                        throw ProtocolViolation(.versionWentBackwards,
                                                "chunk \(chunk) at version \(version) after \(versions[index])")
                    }
                    guard let range = g.byteRange(ofChunk: index), bytes.count == range.count else {
                        throw ProtocolViolation(.malformedFrame, "chunk \(chunk) carries \(bytes.count) bytes")
                    }
                    try region.storeChunk(index, bytes)
                    let first = versions[index] == 0
                    versions[index] = version
                    progress.withLock { p in
                        if first { p.chunksPresent += 1 }
                        p.chunksApplied += 1
                        p.lastAppliedVersion = max(p.lastAppliedVersion, version)
                    }
                    unacknowledged = true
                case .synced:
                    // Everything not sent in the initial pass was identical.
                    progress.withLock { $0.synced = true }
                case .error(let code, let message):
                    throw ReplicationError.refusedByPeer(code: code, message: message)
                default:
                    throw ProtocolViolation(.unexpectedFrame, "a primary sends WRITE, SYNCED or ERROR on a region stream")
                }
                // ACK once what has arrived is applied, not per frame.
                if unacknowledged && !frames.hasBufferedBytes {
                    try await frames.send(.ack(version: progress.withLock { $0.lastAppliedVersion }))
                    unacknowledged = false
                }
            }
            throw ReplicationError.streamEnded
        } catch let violation as ProtocolViolation {
            await frames.fail(violation)
            throw ReplicationError.violation(violation)
        }
    }
}
