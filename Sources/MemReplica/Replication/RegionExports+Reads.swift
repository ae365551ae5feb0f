import MemReplicaSystem
import MemReplicaTransportCore

/// The exporter's side of the streams that ask for chunks: reads streams
/// (READ answered with DATA, for faults and pulls) and verify streams
/// (DIGEST_READ answered with DIGESTS).
extension RegionExports {
    /// A reads stream: every READ is answered with one DATA per chunk, in
    /// order, each copied from the live mapping as it is sent. Over QUIC the
    /// answers are made on the loop thread as READs arrive, so a fault's
    /// request is answered without waking a task; elsewhere by this task.
    /// On a fault stream (`forFaults`) the loop then polls a moment for the
    /// next fault's READ: a faulting thread often touches its next missing
    /// page within µs.
    func serveReads(_ region: Region, over frames: FrameStream, peer: String, forFaults: Bool) async throws {
        let observer = self.observer, taps = sendTaps
        if let served = frames.stream as? any LoopServedStream, let leftover = frames.handOverReading() {
            try await served.readOnLoop(LoopFrameReader(leftover: leftover) { frame, stream in
                let arrived = ContinuousClock.now
                let asked = try Self.chunks(askedBy: frame, of: region)
                var bytes = 0
                var holes = HoleCursor(region)
                for chunk in asked {
                    if stream.sendBacklogged {
                        // The rest comes back as a READ of its own once ACKs make room.
                        observer?.servedRead(region: region.name, peer: peer, chunks: Int(chunk - asked.lowerBound),
                                             bytes: bytes, duration: arrived.duration(to: .now))
                        return .read(firstChunk: chunk, count: asked.upperBound - chunk)
                    }
                    let data = try Self.bytes(of: Int(chunk), in: region, holes: &holes, forFaults: forFaults)
                    let header = try Frame.dataHeader(firstChunk: chunk, byteCount: data.count)
                    let copy = OwnedBytes.copy(header: header, body: data)
                    do {
                        try Self.servable(region)
                    } catch {
                        copy.deallocate()
                        throw error
                    }
                    try stream.sendOnLoop(copy)
                    bytes += data.count
                    if let tap = taps.withLock({ $0[region.name] }) { tap(peer, Int(chunk), data.count) }
                }
                observer?.servedRead(region: region.name, peer: peer, chunks: asked.count, bytes: bytes,
                                     duration: arrived.duration(to: .now))
                if forFaults { stream.loop.keepPollingForRequests() }
                return nil
            })
            return
        }
        while let frame = try await frames.receive() {
            let arrived = ContinuousClock.now
            let asked = try Self.chunks(askedBy: frame, of: region)
            var bytes = 0
            var holes = HoleCursor(region)
            for chunk in asked {
                let data = try Self.bytes(of: Int(chunk), in: region, holes: &holes, forFaults: forFaults)
                bytes += data.count
                try await frames.sendData(firstChunk: chunk, bytes: data) { try Self.servable(region) }
                if let tap = taps.withLock({ $0[region.name] }) { tap(peer, Int(chunk), data.count) }
            }
            observer?.servedRead(region: region.name, peer: peer, chunks: asked.count, bytes: bytes,
                                 duration: arrived.duration(to: .now))
        }
    }

    /// A chunk's bytes for DATA. A pull reads a hole of a sparse backing as
    /// zeros without allocating it (a lazy mirror pulls every chunk); a
    /// fault's READ skips the check, whose lseek would add to its latency
    /// (one chunk: the page is allocated, as any reader's touch would).
    private static func bytes(of chunk: Int, in region: Region, holes: inout HoleCursor,
                              forFaults: Bool) throws -> UnsafeRawBufferPointer {
        forFaults ? try region.chunkBytes(chunk) : try holes.chunkBytes(chunk, of: region)
    }

    /// A verify stream: every DIGEST_READ is answered with DIGESTS, SHA-256
    /// of the live bytes of each group of chunks (`RegionDigest.group`).
    func serveDigests(_ region: Region, over frames: FrameStream) async throws {
        let chunks = UInt64(region.geometry.chunkCount)
        while let frame = try await frames.receive() {
            guard case .digestRead(let first, let count, let group) = frame else {
                throw ProtocolViolation(.unexpectedFrame, "a verify stream carries only DIGEST_READ")
            }
            guard first < chunks, count <= chunks - first else {
                throw ProtocolViolation(.chunkOutOfRange, "DIGEST_READ of chunks \(first)..+\(count) of a \(chunks)-chunk region")
            }
            var digests: [UInt8] = []
            var holes = HoleCursor(region)
            for start in stride(from: Int(first), to: Int(first + count), by: Int(group)) {
                digests += try RegionDigest.group(first: start, group: min(Int(group), Int(first + count) - start),
                                              chunkCount: Int(chunks)) { chunk in
                    // Holes as zeros, untouched: verifying a sparse region must not allocate it.
                    let copy = Array(try holes.chunkBytes(chunk, of: region))
                    try region.checkIntact()
                    return copy
                }
            }
            try await frames.send(.digests(firstChunk: first, group: group, digests: digests))
        }
    }

    /// The chunks a frame on a reads stream asks for: it must be a READ
    /// within the region.
    private static func chunks(askedBy frame: Frame, of region: Region) throws -> Range<UInt64> {
        let chunks = UInt64(region.geometry.chunkCount)
        guard case .read(let first, let count) = frame else {
            throw ProtocolViolation(.unexpectedFrame, "a reads stream carries only READ")
        }
        guard first < chunks, count <= chunks - first else {
            throw ProtocolViolation(.chunkOutOfRange, "READ of chunks \(first)..+\(count) of a \(chunks)-chunk region")
        }
        return first..<(first + count)
    }
}
