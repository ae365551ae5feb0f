import MemReplicaSystem
import Foundation

/// What a benchmark's primary region holds. Random bytes are the worst
/// case for every saving on the wire; zeros the best; the two real images
/// are memory nobody here wrote:
/// - `pythonHeap`: the heap of a running CPython that parsed its own
///   standard library (sources, ASTs, token tables), read through
///   /proc/PID/mem;
/// - `sqlite`: a database file the Debian `sqlite3` tool wrote, holding
///   this machine's package list (/var/lib/dpkg/status) with an index,
///   inserted again under new ids until it is large enough.
/// An image smaller than the region is repeated to fill it (said in the
/// report as `imageBytes`).
public enum BenchContent: String, Codable, Sendable, CaseIterable {
    case random, zeros
    case pythonHeap = "python-heap"
    case sqlite

    /// Fills `memory`; returns the size of the image it repeated (the
    /// region's size for the synthetic kinds).
    @discardableResult
    public func fill(_ memory: UnsafeMutableRawBufferPointer, workDirectory: String, seed: UInt64 = 1) throws -> Int {
        switch self {
        case .random:
            fillPattern(memory, seed: seed)
            return memory.count
        case .zeros:
            memory.initializeMemory(as: UInt8.self, repeating: 0)
            return memory.count
        case .pythonHeap:
            return Self.repeating(try Self.pythonHeap(bytes: memory.count, workDirectory: workDirectory), into: memory)
        case .sqlite:
            return Self.repeating(try Self.sqliteImage(bytes: memory.count, workDirectory: workDirectory), into: memory)
        }
    }

    private static func repeating(_ image: [UInt8], into memory: UnsafeMutableRawBufferPointer) -> Int {
        precondition(!image.isEmpty)
        var offset = 0
        image.withUnsafeBytes { source in
            while offset < memory.count {
                let n = min(source.count, memory.count - offset)
                UnsafeMutableRawBufferPointer(rebasing: memory[offset..<offset + n])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[..<n]))
                offset += n
            }
        }
        return image.count
    }

    /// At most this much is taken from one image; a larger region repeats it.
    static let imageLimit = 512 << 20

    static let pythonScript = """
        import ast, os, sys, sysconfig
        target, ready = int(sys.argv[1]), sys.argv[2]
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        kept = []
        for root, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                try:
                    with open(os.path.join(root, name), encoding="utf-8") as f:
                        source = f.read()
                    tree = ast.parse(source)
                except Exception:
                    continue
                words = {}
                for w in source.split():
                    words[w] = words.get(w, 0) + 1
                kept.append((name, source, tree, words))
            if rss() >= target:
                break
        open(ready, "w").write(str(rss()))
        import signal
        signal.pause()
        """

    /// The writable anonymous memory of a CPython that parsed its standard
    /// library until its RSS reached `bytes` (or the library ran out).
    static func pythonHeap(bytes: Int, workDirectory: String) throws -> [UInt8] {
        let ready = workDirectory + "/python-ready-\(getpid())"
        try? FileManager.default.removeItem(atPath: ready)
        let target = min(bytes, imageLimit)
        let child = try ChildProcess("/usr/bin/python3", ["-c", pythonScript, String(target), ready])
        defer {
            child.signal(SIGKILL)
            _ = child.wait()
            try? FileManager.default.removeItem(atPath: ready)
        }
        let deadline = ContinuousClock.now + .seconds(300)
        while !FileManager.default.fileExists(atPath: ready) {
            guard ContinuousClock.now < deadline else { throw BenchContentError("python3 did not load its dataset in 300 s") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let maps = try String(contentsOfFile: "/proc/\(child.pid)/maps", encoding: .utf8)
        let mem = open("/proc/\(child.pid)/mem", O_RDONLY)
        guard mem >= 0 else { throw BenchContentError("cannot open /proc/\(child.pid)/mem: errno \(errno)") }
        defer { close(mem) }
        var image: [UInt8] = []
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            // Private writable memory with no file: the heap and the arenas.
            guard fields.count >= 5, fields[1] == "rw-p", fields.count == 5 || fields[5] == "[heap]" else { continue }
            let bounds = fields[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
            guard bounds.count == 2 else { continue }
            let length = min(Int(bounds[1] - bounds[0]), target - image.count)
            guard length > 0 else { break }
            var part = [UInt8](repeating: 0, count: length)
            let n = part.withUnsafeMutableBytes { pread(mem, $0.baseAddress, length, off_t(bounds[0])) }
            if n > 0 { image += part.prefix(n) }
        }
        guard image.count >= 1 << 20 else { throw BenchContentError("python3's heap gave only \(image.count) bytes") }
        return image
    }

    /// A SQLite database of this machine's package list, written by sqlite3.
    static func sqliteImage(bytes: Int, workDirectory: String) throws -> [UInt8] {
        let status = try String(contentsOfFile: "/var/lib/dpkg/status", encoding: .utf8)
        var rows: [[String]] = []
        for paragraph in status.components(separatedBy: "\n\n") {
            var fields: [String: String] = [:]
            var last: String?
            for line in paragraph.split(separator: "\n", omittingEmptySubsequences: true) {
                if line.first == " ", let key = last {
                    fields[key, default: ""] += "\n" + line
                } else if let colon = line.firstIndex(of: ":") {
                    let key = String(line[..<colon])
                    fields[key] = String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
                    last = key
                }
            }
            guard let name = fields["Package"] else { continue }
            rows.append([name, fields["Version"] ?? "", fields["Architecture"] ?? "", fields["Maintainer"] ?? "",
                         fields["Depends"] ?? "", fields["Description"] ?? ""])
        }
        guard !rows.isEmpty else { throw BenchContentError("/var/lib/dpkg/status lists no packages") }
        func quoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }
        let database = workDirectory + "/content-\(getpid()).sqlite"
        let script = workDirectory + "/content-\(getpid()).sql"
        try? FileManager.default.removeItem(atPath: database)
        defer {
            try? FileManager.default.removeItem(atPath: database)
            try? FileManager.default.removeItem(atPath: script)
        }
        let target = min(bytes, imageLimit)
        var round = 0
        var size = 0
        // The package list once, then the table copied into itself (new
        // ids, the index kept up) until the file is large enough.
        while size < target && round < 64 {
            var sql = "BEGIN;\n"
            if round == 0 {
                sql += "CREATE TABLE packages(id INTEGER PRIMARY KEY, name TEXT, version TEXT, arch TEXT, maintainer TEXT, "
                    + "depends TEXT, description TEXT);\nCREATE INDEX packages_name ON packages(name, version);\n"
                for r in rows { sql += "INSERT INTO packages VALUES(NULL, \(r.map(quoted).joined(separator: ", ")));\n" }
            } else {
                sql += "INSERT INTO packages SELECT NULL, name, version, arch, maintainer, depends, description FROM packages;\n"
            }
            sql += "COMMIT;\n"
            try sql.write(toFile: script, atomically: false, encoding: .utf8)
            let sqlite = try ChildProcess("/usr/bin/sqlite3", [database, ".read \(script)"], errorPath: script + ".err")
            guard sqlite.wait() == 0 else {
                let why = (try? String(contentsOfFile: script + ".err", encoding: .utf8)) ?? ""
                try? FileManager.default.removeItem(atPath: script + ".err")
                throw BenchContentError("sqlite3 failed: \(why)")
            }
            try? FileManager.default.removeItem(atPath: script + ".err")
            size = (try? FileManager.default.attributesOfItem(atPath: database)[.size] as? Int) ?? 0
            round += 1
        }
        return Array(try Data(contentsOf: URL(fileURLWithPath: database)).prefix(target))
    }
}

public struct BenchContentError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
