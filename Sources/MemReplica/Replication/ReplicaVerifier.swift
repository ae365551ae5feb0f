import MemReplicaTransportCore
import Foundation

/// Compares a replica with its primary, chunk by chunk, over a verify
/// stream (SUBSCRIBE mode 4): SHA-256 of groups of chunks first, then of each
/// chunk in the groups that differ. A primary that is being written makes
/// chunks differ for a moment; those are asked again after a pause, up to
/// `rounds` times, before they count as different.
struct ReplicaVerifier {
    let region: Region
    let remoteName: String
    let source: String
    /// For a lazy replica: whether a chunk is held (others are not compared,
    /// and held ones are read from the file, never faulted in).
    let held: ((Int) -> Bool)?
    var rounds = 5
    var pause: Duration = .milliseconds(200)

    func run(over connection: any TransportConnection) async throws -> VerifyReport {
        let frames = FrameStream(try await connection.openStream())
        do {
            let report = try await compare(over: frames)
            await frames.stream.reset(errorCode: ProtocolErrorCode.noError.rawValue)
            return report
        } catch {
            await frames.stream.reset(errorCode: ProtocolErrorCode.noError.rawValue)
            throw error
        }
    }

    private func compare(over frames: FrameStream) async throws -> VerifyReport {
        let started = ContinuousClock.now
        let g = region.geometry
        try await frames.send(.subscribe(.init(name: remoteName, size: UInt64(g.size), chunkSize: UInt64(g.chunkSize),
                                               mode: .verify)))
        // About 4096 groups: a few hundred KiB of digests for any region.
        var group = 1
        while g.chunkCount / group > 4096 && UInt64(group) < FrameLimits.maxDigestGroup { group *= 2 }

        let theirs = try await digests(over: frames, first: 0, count: g.chunkCount, group: group)
        var suspects: [Int] = []
        var mine: [[UInt8]] = []
        for (index, start) in stride(from: 0, to: g.chunkCount, by: group).enumerated() {
            let chunks = start..<min(start + group, g.chunkCount)
            let digest = try RegionDigest.group(first: start, group: group, chunkCount: g.chunkCount) { try bytes(of: $0) }
            mine.append(digest)
            let wholeGroupHeld = held.map { isHeld in chunks.allSatisfy(isHeld) } ?? true
            if digest != theirs[index] || !wholeGroupHeld { suspects += chunks.filter { held?($0) ?? true } }
        }
        var round = 0
        while !suspects.isEmpty && round < rounds {
            round += 1
            if round > 1 { try await Task.sleep(for: pause) }
            var still: [Int] = []
            for run in Self.runs(of: suspects) {
                for start in stride(from: run.lowerBound, to: run.upperBound, by: FrameLimits.maxDigestsPerFrame) {
                    let count = min(FrameLimits.maxDigestsPerFrame, run.upperBound - start)
                    let primary = try await digests(over: frames, first: start, count: count, group: 1)
                    for (offset, digest) in primary.enumerated() {
                        let chunk = start + offset
                        if try RegionDigest.group(first: chunk, group: 1, chunkCount: g.chunkCount, bytes: bytes) != digest {
                            still.append(chunk)
                        }
                    }
                }
            }
            suspects = still
        }
        let missing = held.map { isHeld in (0..<g.chunkCount).filter { !isHeld($0) }.count } ?? 0
        return VerifyReport(region: region.name, source: source, lazy: held != nil, chunks: g.chunkCount,
                            chunkSize: g.chunkSize, compared: g.chunkCount - missing, missing: missing,
                            differingChunks: Array(suspects.prefix(VerifyReport.listed)), differingCount: suspects.count,
                            equal: suspects.isEmpty, primaryDigest: RegionDigest.hex(RegionDigest.root(theirs)),
                            replicaDigest: RegionDigest.hex(RegionDigest.root(mine)), group: group, rounds: round,
                            seconds: started.duration(to: .now).seconds)
    }

    /// A chunk's bytes here: from the file for a lazy replica (a hole reads
    /// as zeros and no fault is raised), else from the mapping.
    private func bytes(of chunk: Int) throws -> [UInt8] {
        held == nil ? try region.copyChunk(chunk) : try region.readChunkFromFile(chunk)
    }

    /// The primary's digests of chunks first..<first+count in groups.
    private func digests(over frames: FrameStream, first: Int, count: Int, group: Int) async throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        let expected = (count + group - 1) / group
        var start = first
        while out.count < expected {
            let groups = min(FrameLimits.maxDigestsPerFrame, expected - out.count)
            let chunks = min(groups * group, first + count - start)
            try await frames.send(.digestRead(firstChunk: UInt64(start), count: UInt64(chunks), group: UInt64(group)))
            switch try await frames.receive() {
            case .digests(let at, let size, let bytes)? where at == UInt64(start) && size == UInt64(group)
                && bytes.count == groups * RegionDigest.byteCount:
                for i in 0..<groups {
                    out.append(Array(bytes[i * RegionDigest.byteCount..<(i + 1) * RegionDigest.byteCount]))
                }
            case .error(let code, let message)?:
                throw ReplicationError.refusedByPeer(code: code, message: message)
            case let other:
                throw ProtocolViolation(.unexpectedFrame, "expected DIGESTS for chunks \(start)..+\(chunks), got \(other.map(\.name) ?? "the end")")
            }
            start += chunks
        }
        return out
    }

    /// Consecutive runs in an ascending list.
    static func runs(of chunks: [Int]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        for c in chunks {
            if let last = out.last, last.upperBound == c { out[out.count - 1] = last.lowerBound..<c + 1 } else { out.append(c..<c + 1) }
        }
        return out
    }
}
