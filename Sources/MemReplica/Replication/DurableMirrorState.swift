import MemReplicaSystem
import Foundation

/// The small state file of a durable mirror (DRBD's protocol C: a chunk is
/// on stable storage before it is acknowledged): what the replica's file
/// holds, kept in the state folder as `mirrors/NAME.state.json` and
/// replaced atomically (`AtomicFile`).
///
/// `complete` is true only while the file is an exact copy of the primary
/// at `version` of `generation`: after the initial pass was applied,
/// self-checked and synced to disk, and again after each acknowledged
/// batch of writes once it is on disk. It is set false before the first
/// chunk of any batch is stored, so a crash in the middle of one (a chunk
/// half copied) is never taken for a complete copy. A replica restarted
/// after a crash reads it to know what it has, and is not `synced` either
/// way until it has converged with its primary again.
public final class DurableMirrorState: Sendable {
    public struct Record: Codable, Sendable, Equatable {
        public var path: String
        public var size: Int
        public var chunkSize: Int
        public var regionID: String
        public var generation: UInt64
        public var version: UInt64
        public var complete: Bool
        public var writtenAt: Date
    }

    public let file: String
    private let state: Locked<State>

    private struct State {
        var record: Record?
        /// Every stored chunk is on disk and acknowledged: the file is a
        /// copy at `cleanVersion` (not yet recorded, maybe).
        var clean = false
        var cleanVersion: UInt64 = 0
        var identity: RegionIdentity?
        var path = ""
        var geometry: RegionGeometry?
    }

    /// How often a mirror records a complete copy while writes stream in
    /// (each record is an fsync'd file replace).
    public static let completeMarkInterval: Duration = .milliseconds(100)

    /// The record of mirror `region` in `folder` (a peer keeps them in
    /// its state folder's `mirrors/`).
    public init(folder: String, region: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        file = folder + "/" + AtomicFile.safeName(region) + ".state.json"
        let record = try AtomicFile.read(file).flatMap { try? JSONDecoder.durable.decode(Record.self, from: Data($0)) }
        state = Locked(State(record: record))
    }

    /// What the file says now.
    public var record: Record? { state.withLock { $0.record } }

    /// Before a batch of chunks is stored (of a subscription to `identity`):
    /// the file is not a complete copy until the batch is on disk. The state
    /// file is rewritten only when it said complete. The lock is held across
    /// the write, so no "complete" can be recorded after it.
    func beginBatch(path: String, geometry: RegionGeometry, identity: RegionIdentity?) throws {
        try state.withLock { s in
            s.clean = false
            s.path = path
            s.geometry = geometry
            s.identity = identity
            if let r = s.record, !r.complete, r.path == path, r.size == geometry.size { return }
            let r = Record(path: path, size: geometry.size, chunkSize: geometry.chunkSize,
                           regionID: identity?.id ?? s.record?.regionID ?? "", generation: identity?.generation ?? 0,
                           version: s.record?.version ?? 0, complete: false, writtenAt: Date())
            try Self.write(r, to: file)
            s.record = r
        }
    }

    /// The batch is on disk (synced) and equals the primary at `version`.
    func endBatch(version: UInt64) {
        state.withLock { s in
            s.clean = true
            s.cleanVersion = version
        }
    }

    /// Records a complete copy if the file is clean and the record says
    /// otherwise; called at SYNCED and every `completeMarkInterval`.
    func recordCompleteIfClean() throws {
        try state.withLock { s in
            guard s.clean, let g = s.geometry else { return }
            if let r = s.record, r.complete, r.version == s.cleanVersion, r.path == s.path { return }
            let r = Record(path: s.path, size: g.size, chunkSize: g.chunkSize, regionID: s.identity?.id ?? "",
                           generation: s.identity?.generation ?? 0, version: s.cleanVersion, complete: true, writtenAt: Date())
            try Self.write(r, to: file)
            s.record = r
        }
    }

    private static func write(_ record: Record, to file: String) throws {
        try AtomicFile.write(Array(try JSONEncoder.durable.encode(record)), to: file)
    }
}

extension JSONEncoder {
    static var durable: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        e.dateEncodingStrategy = .iso8601
        return e
    }
}

extension JSONDecoder {
    static var durable: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}
