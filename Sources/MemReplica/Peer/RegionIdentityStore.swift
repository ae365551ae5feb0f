import MemReplicaSystem
import Foundation

/// Keeps each exported region's identity in the state folder
/// (`regions/NAME.identity.json`, written atomically), so a restarted primary
/// keeps its region id and moves to the next generation.
public struct RegionIdentityStore: Sendable {
    public let folder: String

    public init(stateDirectory: StateDirectory) {
        folder = stateDirectory.path + "/regions"
    }

    private struct Record: Codable {
        var id: String
        var generation: UInt64
        /// The file the region was exported from: another file under the same
        /// name is another region.
        var path: String
    }

    /// The identity for exporting `name` from `path` in this run: the same id
    /// as last time with the next generation, or a new id at generation 1
    /// (first export, or another file).
    public func advance(region name: String, path: String) throws -> RegionIdentity {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let file = folder + "/" + AtomicFile.safeName(name) + ".identity.json"
        var record: Record
        if let bytes = try AtomicFile.read(file), let old = try? JSONDecoder().decode(Record.self, from: Data(bytes)),
           old.path == path, old.generation < UInt64(1) << 62 {
            record = old
            record.generation += 1
        } else {
            record = Record(id: RegionIdentity.fresh().id, generation: 1, path: path)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try AtomicFile.write(Array(try encoder.encode(record)), to: file)
        return RegionIdentity(id: record.id, generation: record.generation)
    }
}
