import MemReplicaSystem
import Crypto
import Foundation

/// Keeps each region's identity in the state folder
/// (`regions/NAME.PATHHASH.identity.json`, written atomically; the file's
/// path is part of the key, since peers that share a state folder, as the
/// demo's do, hold the same region name in different files), so a restarted primary
/// keeps its region id and moves to the next generation, and a hand-over
/// survives a restart of either side (docs/MIGRATION.md, "The single commit
/// point"):
/// - the source records "handing over to OWNER at g+1" before it sends
///   HANDOVER, and "handed over" once the destination confirmed; a peer
///   with either record refuses to export the region again;
/// - the destination's record of generation g+1 *is* the commit: from the
///   moment it is written the destination owns the region, and exports it
///   after a restart even if its configuration still says "mirror".
public struct RegionIdentityStore: Sendable {
    public let folder: String

    public init(stateDirectory: StateDirectory) {
        folder = stateDirectory.path + "/regions"
    }

    /// What the state folder says of one region.
    public struct Record: Codable, Sendable, Equatable {
        /// The region's name (records written before it was kept have none).
        public var name: String?
        public var id: String
        public var generation: UInt64
        /// The file the region was exported from: another file under the same
        /// name is another region.
        public var path: String
        /// This peer took the region over by a hand-over (it was its mirror),
        /// with this chunk size and allow list (nil: any peer).
        public var acquired: Bool?
        public var chunkSize: Int?
        public var allowedPeers: [String]?
        /// This peer handed the region over, or was doing so.
        public var handOver: HandOver?
        /// Taken over by post-copy and not yet holding every chunk: the
        /// source it pulls from. A restart finds the file incomplete.
        public var filling: String?

        public var identity: RegionIdentity { RegionIdentity(id: id, generation: generation) }
    }

    public struct HandOver: Codable, Sendable, Equatable {
        /// "pending": HANDOVER was (about to be) sent and no answer came;
        /// "done": the destination confirmed.
        public var state: String
        /// The destination's address and the generation offered to it.
        public var owner: String
        public var generation: UInt64
        /// What this peer does with the region afterwards ("mirror", "stop").
        public var then: String
        public var recordedAt: Date
    }

    /// A region this peer handed over: it must not act as its primary.
    public struct HandedOver: Error, CustomStringConvertible, Equatable {
        public let region: String
        public let handOver: HandOver
        public var description: String {
            handOver.state == "done"
                ? "'\(region)' was handed over to \(handOver.owner) at generation \(handOver.generation); "
                    + "this peer no longer exports it"
                : "'\(region)' was being handed over to \(handOver.owner) at generation \(handOver.generation) when this "
                    + "peer stopped, and whether the destination committed is unknown; not exporting it (ask the "
                    + "destination: if it does not own the region, remove the \"handOver\" entry of the region's file "
                    + "under regions/ in the state folder)"
        }
    }

    private func file(_ name: String, path: String) -> String {
        let pathHash = SHA256.hash(data: Data(path.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
        return folder + "/" + AtomicFile.safeName(name) + "." + pathHash + ".identity.json"
    }

    /// The record of `name` exported from (or mirrored into) `path`; before
    /// the path was part of the key, the file was `NAME.identity.json`.
    public func record(region name: String, path: String) throws -> Record? {
        if let bytes = try AtomicFile.read(file(name, path: path)) {
            return try? JSONDecoder.iso8601.decode(Record.self, from: Data(bytes))
        }
        let legacy = folder + "/" + AtomicFile.safeName(name) + ".identity.json"
        guard let bytes = try AtomicFile.read(legacy),
              let record = try? JSONDecoder.iso8601.decode(Record.self, from: Data(bytes)), record.path == path else { return nil }
        return record
    }

    private func write(_ record: Record, region name: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        try AtomicFile.write(Array(try encoder.encode(record)), to: file(name, path: record.path))
    }

    /// The identity for exporting `name` from `path` in this run: the same id
    /// as last time with the next generation, or a new id at generation 1
    /// (first export, or another file). Throws `HandedOver` for a region
    /// this peer handed over from that file.
    public func advance(region name: String, path: String) throws -> RegionIdentity {
        var record: Record
        if let old = try self.record(region: name, path: path), old.generation < UInt64(1) << 62 {
            if let handOver = old.handOver { throw HandedOver(region: name, handOver: handOver) }
            record = old
            record.generation += 1
        } else {
            record = Record(id: RegionIdentity.fresh().id, generation: 1, path: path)
        }
        try write(record, region: name)
        return record.identity
    }

    /// The record of `name` when this peer took it over at `path` by a
    /// hand-over and has not handed it on: it exports it, whatever its
    /// mirror lines say.
    public func takenOver(region name: String, path: String) throws -> Record? {
        guard let r = try record(region: name, path: path), r.acquired == true, r.handOver == nil else { return nil }
        return r
    }

    /// Source: recorded before HANDOVER is sent.
    public func beginHandOver(region name: String, path: String, from identity: RegionIdentity, to owner: String,
                              then: MigrationRequest.AfterHandOver) throws {
        var record = try self.record(region: name, path: path) ?? Record(id: identity.id, generation: identity.generation, path: path)
        record.id = identity.id
        record.generation = identity.generation
        record.path = path
        record.handOver = HandOver(state: "pending", owner: owner, generation: identity.generation + 1,
                                   then: then.rawValue, recordedAt: Date())
        try write(record, region: name)
    }

    /// Source: the destination confirmed.
    public func finishHandOver(region name: String, path: String) throws {
        guard var record = try self.record(region: name, path: path), record.handOver != nil else { return }
        record.handOver?.state = "done"
        record.handOver?.recordedAt = Date()
        try write(record, region: name)
    }

    /// Source: the destination said it did not commit; the region is ours.
    public func abandonHandOver(region name: String, path: String) throws {
        guard var record = try self.record(region: name, path: path), record.handOver != nil else { return }
        record.handOver = nil
        try write(record, region: name)
    }

    /// Destination: the commit point. Written atomically; from here on this
    /// peer owns `name` at `identity`.
    /// `filling`: post-copy, the source still holding chunks this copy lacks.
    public func acquire(region name: String, path: String, identity: RegionIdentity, chunkSize: Int,
                        allowedPeers: Set<String>?, filling: String? = nil) throws {
        try write(Record(name: name, id: identity.id, generation: identity.generation, path: path, acquired: true,
                         chunkSize: chunkSize, allowedPeers: allowedPeers.map { $0.sorted() }, filling: filling), region: name)
    }

    /// Destination: a post-copy fill ended; the copy holds every chunk.
    public func finishFill(region name: String, path: String) throws {
        guard var record = try self.record(region: name, path: path), record.filling != nil else { return }
        record.filling = nil
        try write(record, region: name)
    }

    /// Every region this peer took over and still owns (for a restart:
    /// those no configuration line names are exported too).
    public func allTakenOver() -> [Record] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return files.filter { $0.hasSuffix(".identity.json") }.compactMap { file -> Record? in
            guard let bytes = try? AtomicFile.read(folder + "/" + file),
                  let r = try? JSONDecoder.iso8601.decode(Record.self, from: Data(bytes)),
                  r.name != nil, r.acquired == true, r.handOver == nil else { return nil }
            return r
        }.sorted { ($0.name ?? "") < ($1.name ?? "") }
    }
}

extension JSONDecoder {
    static var iso8601: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
