import MemReplicaSystem
import MemReplicaTransportCore
import Foundation
import SystemPackage
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
        /// The replica's own check at SYNCED: its copy hashed to the digest
        /// the primary sent (nil before SYNCED, or when none was sent).
        public var selfCheckPassed: Bool?
    }

    /// False when the local region was just created: its content is known
    /// to be zeros, nothing to offer for a resume, so hashing it is skipped.
    public let offersHeldChunks: Bool
    /// The region identity the mirror followed before, if any (SUBSCRIBE
    /// names it, so a stale primary refuses).
    public let known: RegionIdentity?
    /// The longest an applied WRITE waits for its ACK while more keep arriving.
    static let ackInterval: Duration = .milliseconds(10)

    /// Hashes chunks for this subscription only (SUBSCRIBE carries it).
    private let key = ChunkHashKey.random()

    /// Durable (DRBD protocol C): chunks reach stable storage before they
    /// are acknowledged, and `durable` records whether the file is a
    /// complete copy. `identity` is what the catalog says of the region now.
    let durable: DurableMirrorState?
    let identity: RegionIdentity?

    public init(region: Region, remoteName: String? = nil, offersHeldChunks: Bool = true, known: RegionIdentity? = nil,
                identity: RegionIdentity? = nil, durable: DurableMirrorState? = nil) {
        self.region = region
        self.remoteName = remoteName ?? region.name
        self.offersHeldChunks = offersHeldChunks
        self.known = known
        self.identity = identity
        self.durable = durable
        storedChunks = offersHeldChunks ? nil : [Bool](repeating: false, count: region.geometry.chunkCount)
    }

    /// Kept while a migration to this peer runs (`startHandOverHashes`).
    private let handOver = Locked<HandOverHashes?>(nil)

    /// Keeps keyed hashes of this copy current from now on, under `key`
    /// (a migration's); returns once the first full pass is done.
    func startHandOverHashes(key: ChunkHashKey) async -> HandOverHashes {
        let hashes = HandOverHashes(region: region, key: key)
        handOver.withLock { $0 = hashes }
        await hashes.fill()
        return hashes
    }

    /// Set by `haltWrites`: no WRITE is stored from then on.
    private let halted = Locked(false)
    /// Ends the run from another task (`end`).
    private let ending = RunEnding()

    /// Stops storing WRITEs; returns once a store under way has finished.
    /// A post-copy hand-over then owns the mapping (its missing chunks are
    /// dropped and pulled: a late WRITE must not land in them).
    func haltWrites() {
        halted.withLock { $0 = true }
    }

    /// Stored chunks not yet on stable storage (durable mirrors).
    private var unsynced: [Range<Int>] = []

    /// msync(MS_SYNC) of every chunk stored since the last call: the bytes
    /// are on stable storage when it returns.
    private func syncStored() throws {
        guard let base = region.bytes.baseAddress else { return }
        for range in Self.coalesced(unsynced) where msync(base + range.lowerBound, range.count, MS_SYNC) != 0 {
            throw Region.Failure.map(errno: Errno(rawValue: errno))
        }
        unsynced.removeAll(keepingCapacity: true)
    }

    private static func coalesced(_ ranges: [Range<Int>]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = out.last, last.upperBound >= r.lowerBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }

    private var durablePath: String { region.backing.description }

    public var currentProgress: Progress { progress.withLock { $0 } }
    public var initialSyncComplete: Bool { currentProgress.synced }

    /// A new replica's pages made ahead of the data (this run's initial sync).
    private var prefault: ReplicaPrefault?
    /// For a new replica's file: the chunks this mirror has stored bytes
    /// into, over all its runs. The others are holes, zeros already, so a
    /// zero chunk for one of them needs nothing, not even a read (reading
    /// a hole through the mapping would allocate its pages). Nil when the
    /// file held bytes before: any chunk may hold data.
    private var storedChunks: [Bool]?

    /// Ends the run (now, or as soon as it starts) by resetting its region
    /// stream; the connection, which may carry other mirrors, stays.
    public func end() async {
        await ending.end()
    }

    /// Mirrors until the connection or stream ends; throws why.
    public func run(over connection: any TransportConnection) async throws {
        let frames = FrameStream(try await connection.openStream())
        try await ending.begin(frames.stream)
        let g = region.geometry
        let hasher = ChunkHasher(key: key)
        try await subscribe(on: frames, hasher: hasher)
        if !offersHeldChunks { prefault = ReplicaPrefault.start(for: region) }
        defer { prefault?.stop(); prefault = nil }
        var stream = StreamState(chunkCount: g.chunkCount)
        let marker = startCompleteMarker()
        defer { marker?.cancel() }
        do {
            var next = try await frames.receive()
            while let frame = next {
                switch frame {
                case .lanes(let count, let token):
                    try await receivePassOverLanes(main: frames, connection: connection, count: Int(count), token: token,
                                                   hasher: hasher, stream: &stream)
                case .write, .pages, .error:
                    try apply(frame, to: &stream)
                case .synced(_, let digest):
                    try applySynced(digest: digest, hasher: hasher, to: &stream)
                default:
                    throw ProtocolViolation(.unexpectedFrame, "a primary sends WRITE, PAGES, SYNCED or ERROR on a region stream")
                }
                // ACK once what has arrived is applied, not per frame; but
                // at least every `ackInterval` under a steady inflow, or the
                // primary would see no progress (lag, a migration's rate)
                // for as long as the writes keep coming.
                if stream.unacknowledged
                    && (!frames.hasBufferedBytes || stream.lastAck.duration(to: .now) >= Self.ackInterval) {
                    try await acknowledge(on: frames, stream: &stream)
                }
                next = try await frames.receive()
            }
            throw ReplicationError.streamEnded
        } catch let violation as ProtocolViolation {
            await frames.fail(violation)
            throw ReplicationError.violation(violation)
        }
    }

    /// What one run knows of its region stream.
    struct StreamState {
        /// The version of each chunk applied (0: none yet).
        var versions: [UInt64]
        var unacknowledged = false
        var lastAck = ContinuousClock.now
        /// A durable mirror's batch of stores not yet recorded as complete.
        var batchOpen = false
        /// The initial pass arrives over lanes: its versions (1, 2, 3...)
        /// are applied out of order, and what is acknowledged is the
        /// highest below which every version was applied.
        var overLanes = false
        var contiguousVersion: UInt64 = 0
        /// Versions applied above `contiguousVersion` (lanes only).
        var appliedAhead = Set<UInt64>()
        /// The highest version below which every one of this run's
        /// subscription was applied (on the region stream alone they come
        /// in order).
        var appliedVersion: UInt64 = 0
        /// This run's SYNCED was applied: a pass over lanes now is a later one.
        var synced = false
        init(chunkCount: Int) { versions = [UInt64](repeating: 0, count: chunkCount) }
    }

    /// SUBSCRIBE, then the hashes of what we hold already (zeros for a new
    /// file): the primary sends only chunks that differ, as rsync does.
    private func subscribe(on frames: FrameStream, hasher: ChunkHasher) async throws {
        let g = region.geometry
        let held = offersHeldChunks ? (0..<g.chunkCount).map { hasher.hash(region, chunk: $0) } : []
        // Hashes of pages our file could not provide are no offer.
        try region.checkBacking()
        do {
            try await frames.send(.subscribe(.init(name: remoteName, size: UInt64(g.size), chunkSize: UInt64(g.chunkSize),
                                                   mode: .eager, hashedChunks: UInt64(held.count), hashKey: key.bytes,
                                                   knownRegionID: known?.id ?? "", knownGeneration: known?.generation ?? 0)))
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
    }

    /// A durable mirror records a clean copy at most every interval while
    /// writes stream in (and at once at SYNCED). Nil when not durable.
    private func startCompleteMarker() -> Task<Void, Never>? {
        durable.map { durable in
            Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: DurableMirrorState.completeMarkInterval)
                    try? durable.recordCompleteIfClean()
                }
            }
        }
    }

    /// A WRITE or PAGES frame stored; an ERROR thrown as the peer's refusal.
    func apply(_ frame: Frame, to stream: inout StreamState) throws {
        switch frame {
        case .write(let chunk, let version, let bytes):
            try apply(chunk: chunk, version: version, bytes: bytes, to: &stream)
        case .pages(let pages):
            try apply(pages, to: &stream)
        case .error(let code, let message):
            throw ReplicationError.refusedByPeer(code: code, message: message)
        default:
            throw ProtocolViolation(.unexpectedFrame, "a pass carries WRITE or PAGES, not \(frame.name)")
        }
    }

    /// The chunk a WRITE or PAGES frame names, checked: in the region and
    /// newer than the one held. Opens a durable mirror's batch.
    private func admit(chunk: UInt64, version: UInt64, to stream: inout StreamState) throws -> (index: Int, range: Range<Int>) {
        let g = region.geometry
        guard chunk < UInt64(g.chunkCount), let range = g.byteRange(ofChunk: Int(chunk)) else {
            throw ProtocolViolation(.chunkOutOfRange, "chunk \(chunk) of a \(g.chunkCount)-chunk region")
        }
        let index = Int(chunk)
        guard version > stream.versions[index] else {
            throw ProtocolViolation(.versionWentBackwards,
                                    "chunk \(chunk) at version \(version) after \(stream.versions[index])")
        }
        return (index, range)
    }

    private func openBatch(_ stream: inout StreamState) throws {
        if let durable, !stream.batchOpen {
            try durable.beginBatch(path: durablePath, geometry: region.geometry, identity: identity)
            stream.batchOpen = true
        }
    }

    /// Stores a WRITE's chunk, which must be newer than the one held.
    private func apply(chunk: UInt64, version: UInt64, bytes: [UInt8], to stream: inout StreamState) throws {
        let (index, range) = try admit(chunk: chunk, version: version, to: &stream)
        guard bytes.count == range.count else {
            throw ProtocolViolation(.malformedFrame, "chunk \(chunk) carries \(bytes.count) bytes")
        }
        try openBatch(&stream)
        try halted.withLock { stopped in
            guard !stopped else {
                throw ProtocolViolation(.migrationAborted, "the region was taken over after a post-copy hand-over")
            }
            // Zeros into a chunk never stored into: it is zeros already.
            if storedChunks?[index] == false, bytes.withUnsafeBytes(PageLayout.isZero) { return }
            try region.storeChunk(index, bytes)
            storedChunks?[index] = true
        }
        applied(index, range: range, version: version, to: &stream)
    }

    /// What PAGES frames need, made at the first one. The chunk-sized
    /// buffers are each frame's own, freed once it is applied: a peer
    /// following many idle regions holds none.
    private final class PagesDecoding {
        let hasher: PageTagHasher
        let compressor = PageCompressor()
        init(key: ChunkHashKey) {
            hasher = PageTagHasher(key: key)
        }
    }
    private var pagesDecoding: PagesDecoding?

    /// Applies a PAGES frame: present pages stored, zero pages zeroed, the
    /// rest kept. With a check, the chunk is assembled aside and hashed
    /// first: a copy that is not what the primary last sent stores nothing.
    /// A chunk all of zeros is dropped from the file (a hole) instead.
    private func apply(_ p: Frame.Pages, to stream: inout StreamState) throws {
        let (index, range) = try admit(chunk: p.chunk, version: p.version, to: &stream)
        guard PageLayout.pageCount(ofChunkBytes: range.count) == p.pageCount else {
            throw ProtocolViolation(.malformedFrame, "PAGES for chunk \(p.chunk) names \(p.pageCount) pages, "
                                    + "not \(PageLayout.pageCount(ofChunkBytes: range.count))")
        }
        let decoding = pagesDecoding ?? PagesDecoding(key: key)
        pagesDecoding = decoding
        var expected = 0
        for i in 0..<p.pageCount where p.isPresent(i) { expected += PageLayout.range(ofPage: i, inChunkOf: range.count).count }
        // The present pages, decompressed.
        let pages = UnsafeMutableRawBufferPointer.allocate(byteCount: max(expected, 1), alignment: 64)
        defer { pages.deallocate() }
        try p.payload.withUnsafeBytes { payload in
            try decoding.compressor.decompress(payload, with: p.codec, into: UnsafeMutableRawBufferPointer(rebasing: pages[..<expected]))
        }
        try openBatch(&stream)
        try halted.withLock { stopped in
            guard !stopped else {
                throw ProtocolViolation(.migrationAborted, "the region was taken over after a post-copy hand-over")
            }
            let target = UnsafeMutableRawBufferPointer(rebasing: region.bytes[range])
            if p.zeroCount == p.pageCount {
                // Nothing to do for a chunk never stored into; elsewhere
                // reading is cheaper than a hole punch.
                if storedChunks?[index] ?? true, !PageLayout.isZero(UnsafeRawBufferPointer(target)),
                   (try? region.discard(range)) == nil {
                    target.initializeMemory(as: UInt8.self, repeating: 0)
                }
                try region.checkIntact()
                return
            }
            if let check = p.check {
                // The chunk as it will be, assembled aside and checked first.
                let assembled = UnsafeMutableRawBufferPointer.allocate(byteCount: range.count, alignment: 64)
                defer { assembled.deallocate() }
                assembled.copyMemory(from: UnsafeRawBufferPointer(target))
                Self.overlay(p, pages: UnsafeRawBufferPointer(pages), onto: assembled)
                guard decoding.hasher.chunkHash(UnsafeRawBufferPointer(assembled)) == check else {
                    throw ReplicationError.pageCheckFailed(region: region.name, chunk: index)
                }
            }
            Self.overlay(p, pages: UnsafeRawBufferPointer(pages), onto: target)
            storedChunks?[index] = true
            // A store the file could not take landed in a private zero page.
            try region.checkIntact()
        }
        applied(index, range: range, version: p.version, to: &stream)
    }

    /// Writes a PAGES frame's present pages (from `pages`, in order) and
    /// zero pages into `chunk`; the others stay.
    private static func overlay(_ p: Frame.Pages, pages: UnsafeRawBufferPointer, onto chunk: UnsafeMutableRawBufferPointer) {
        var offset = 0
        for i in 0..<p.pageCount {
            let r = PageLayout.range(ofPage: i, inChunkOf: chunk.count)
            if p.isPresent(i) {
                UnsafeMutableRawBufferPointer(rebasing: chunk[r]).copyMemory(from: UnsafeRawBufferPointer(rebasing: pages[offset..<offset + r.count]))
                offset += r.count
            } else if p.isZero(i) {
                UnsafeMutableRawBufferPointer(rebasing: chunk[r]).initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    /// Bookkeeping after a chunk was stored at `version`.
    private func applied(_ index: Int, range: Range<Int>, version: UInt64, to stream: inout StreamState) {
        handOver.withLock { $0 }?.applied(index)
        if storedChunks?[index] ?? true { prefault?.dataArrived(at: range) }
        if durable != nil { unsynced.append(range) }
        let first = stream.versions[index] == 0
        stream.versions[index] = version
        if stream.overLanes {
            if version == stream.contiguousVersion + 1 {
                stream.contiguousVersion = version
                while stream.appliedAhead.remove(stream.contiguousVersion + 1) != nil { stream.contiguousVersion += 1 }
            } else {
                stream.appliedAhead.insert(version)
            }
        }
        let applied = stream.overLanes ? stream.contiguousVersion : version
        stream.appliedVersion = max(stream.appliedVersion, applied)
        progress.withLock { p in
            if first { p.chunksPresent += 1 }
            p.chunksApplied += 1
            p.lastAppliedVersion = max(p.lastAppliedVersion, applied)
        }
        stream.unacknowledged = true
    }

    /// Everything not sent in the initial pass was identical. What we hold
    /// now must hash to the primary's digest; later WRITEs wait until it
    /// has been checked.
    func applySynced(digest: [UInt8], hasher: ChunkHasher, to stream: inout StreamState) throws {
        if !digest.isEmpty {
            // A zero chunk's hash is computed once (zeros are checked faster than hashed).
            // Holes read as zeros without allocating them.
            var zeroHash: (count: Int, hash: ChunkHash)?
            var holes = HoleCursor(region)
            let ours = RegionDigest.synced((0..<region.geometry.chunkCount).map { chunk in
                let bytes = try! holes.chunkBytes(chunk, of: region)
                guard PageLayout.isZero(bytes) else { return hasher.hash(bytes) }
                if let z = zeroHash, z.count == bytes.count { return z.hash }
                let h = hasher.hash([UInt8](repeating: 0, count: bytes.count))
                zeroHash = (bytes.count, h)
                return h
            })
            progress.withLock { $0.selfCheckPassed = ours == digest }
            guard ours == digest else {
                throw ReplicationError.selfCheckFailed(region: region.name)
            }
        }
        if let durable {
            // The file is a complete, checked copy: on disk, then said so.
            try syncStored()
            durable.endBatch(version: progress.withLock { $0.lastAppliedVersion })
            try durable.recordCompleteIfClean()
            stream.batchOpen = false
        }
        progress.withLock { $0.synced = true }
        stream.synced = true
        prefault?.stop()
        prefault = nil
    }

    /// ACKs the highest version applied; a durable mirror once it is on
    /// stable storage too.
    func acknowledge(on frames: FrameStream, stream: inout StreamState) async throws {
        let (version, synced) = (stream.appliedVersion, progress.withLock { $0.synced })
        if let durable {
            try syncStored()
            // Before SYNCED the file is not a whole copy yet.
            if synced {
                durable.endBatch(version: version)
                stream.batchOpen = false
            }
        }
        try await frames.send(.ack(version: version))
        stream.unacknowledged = false
        stream.lastAck = .now
    }
}
