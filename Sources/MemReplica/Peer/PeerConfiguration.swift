import MemReplicaQUIC
import MemReplicaTransportCore
import Foundation
import SystemPackage

/// What `memreplica peer` runs with: a JSON config file (`--config`), with
/// the command line on top. Scalar flags override the file's values; every
/// `--export` and `--mirror` is added to the file's lists.
///
/// The file is read strictly: an unknown key, a value of the wrong type, a
/// region exported twice or two mirrors writing one file is an error naming
/// the file and the setting's path (`exports[1].size`). Relative paths in the
/// file are relative to the file's folder.
public struct PeerConfiguration: Sendable, Equatable {
    /// `tls`: all three files, or none for the state folder's development CA.
    public struct TLSFiles: Sendable, Equatable {
        public var cert: String
        public var key: String
        public var ca: String

        public init(cert: String, key: String, ca: String) {
            self.cert = cert
            self.key = key
            self.ca = ca
        }
    }

    /// Where a peer listens when neither the file nor `--listen` says.
    public static let defaultListen = ":4433"
    /// A config file is a few hundred bytes; this only stops a wrong path
    /// (a device, a disk image) from being read in full.
    public static let maximumFileSize = 1 << 20

    public var listen: PeerAddress?
    /// The name in the development certificate (default: the hostname).
    public var name: String?
    public var stateDirectory: String?
    public var control: String?
    public var tls: TLSFiles?
    /// Where to serve Prometheus metrics; nil (the default) serves none.
    public var metrics: PeerAddress?
    /// How long a process attached to a lazy replica may wait on a chunk
    /// that cannot come (primary out of reach, install failing) before its
    /// session ends with an error; nil: `PostCopyMirror.Options`' default.
    public var faultTimeout: Duration?
    /// QUIC's (and the TCP transports') congestion controller by name:
    /// bbr, bbr1, cubic or reno; nil: the transport's default (bbr).
    public var congestionControl: String?
    /// PAGES payload compression this peer uses as exporter, and whether
    /// its mirrors offer to receive compressed pages: zstd, lz4 or none
    /// (nil: lz4 preferred, zstd taken).
    public var compression: PageCodec?
    /// How long a silent peer has before it counts as gone
    /// (`QUICConfiguration.livenessTimeout`; nil: its 5 s default).
    /// Config key `livenessTimeout`, flag `--liveness`, in seconds.
    public var livenessTimeout: Duration?
    /// QUIC's bulk queue gate; nil: the transport's default (2.5 ms).
    /// Config key `bulkQueue`, flag `--bulk-queue`.
    public var bulkQueue: BulkQueueSetting?
    /// Liveness timeouts accepted, in seconds: below half a second a
    /// scheduling hiccup would end live connections, above an hour a dead
    /// peer would hold its mirrors for longer than anyone waits.
    public static let livenessRange: ClosedRange<Double> = 0.5...3600
    /// Bytes all stream buffers may hold (`MemoryBudget`); nil: the
    /// default, sized from physical memory.
    public var memoryBudget: Int?
    /// Where regions handed to this peer without a mirror of them go (it
    /// starts the mirror itself); nil refuses such migrations. Config key
    /// `acceptMigrations`, flag `--accept-migrations`.
    public var acceptMigrations: String?
    public private(set) var exports: [ExportSpec] = []
    public private(set) var mirrors: [MirrorSpec] = []
    /// Where each export and mirror came from, for duplicate errors.
    private var exportOrigins: [Origin] = []
    private var mirrorOrigins: [Origin] = []

    /// Nothing configured: every setting at its default.
    public init() {}

    /// Reads and checks a config file.
    public init(contentsOfFile file: String) throws {
        let bytes: [UInt8]
        do {
            bytes = try Self.read(file)
        } catch {
            throw PeerConfigurationError("cannot read config file \(file): \(error)")
        }
        let folder = URL(fileURLWithPath: file).deletingLastPathComponent().path
        try self.init(json: bytes, file: file, folder: folder)
    }

    /// Checks the JSON text of a config file; `file` names it in errors and
    /// `folder` anchors its relative paths.
    init(json bytes: [UInt8], file: String, folder: String) throws {
        let document: JSONValue
        do {
            document = try JSONParser.parse(bytes)
        } catch {
            throw PeerConfigurationError("\(file):\(error)")
        }
        let reader = Reader(file: file, folder: folder)
        let top = try reader.object(document, at: "", keys: ["listen", "name", "stateDir", "control", "tls",
                                                              "exports", "mirrors", "metrics", "faultTimeout",
                                                              "congestionControl", "compression", "livenessTimeout", "memoryBudget",
                                                              "acceptMigrations", "bulkQueue"])
        listen = try top["listen"].map { try reader.address($0, at: "listen") }
        name = try top["name"].map { try reader.string($0, at: "name") }
        stateDirectory = try top["stateDir"].map { try reader.filePath($0, at: "stateDir") }
        control = try top["control"].map { try reader.filePath($0, at: "control") }
        tls = try top["tls"].flatMap { try reader.tls($0, at: "tls") }
        metrics = try top["metrics"].map { try reader.metricsAddress($0, at: "metrics") }
        faultTimeout = try top["faultTimeout"].map { try reader.seconds($0, at: "faultTimeout") }
        acceptMigrations = try top["acceptMigrations"].map { try reader.filePath($0, at: "acceptMigrations") }
        congestionControl = try top["congestionControl"].map { value in
            let name = try reader.string(value, at: "congestionControl")
            guard QUICConfiguration.CongestionControl(rawValue: name) != nil else {
                throw reader.failure(at: "congestionControl", "expected \(QUICConfiguration.CongestionControl.choices), found \"\(name)\"")
            }
            return name
        }
        compression = try top["compression"].map { value in
            let name = try reader.string(value, at: "compression")
            guard let codec = PageCodec(name: name) else {
                throw reader.failure(at: "compression", "expected zstd, lz4 or none, found \"\(name)\"")
            }
            return codec
        }
        livenessTimeout = try top["livenessTimeout"].map { try reader.liveness($0, at: "livenessTimeout") }
        bulkQueue = try top["bulkQueue"].map { try reader.bulkQueue($0, at: "bulkQueue") }
        memoryBudget = try top["memoryBudget"].map { value in
            let bytes = try reader.byteCount(value, at: "memoryBudget")
            guard let checked = Self.checkedMemoryBudget(bytes) else {
                throw PeerConfigurationError("\(file): memoryBudget: \(Self.memoryBudgetRule)")
            }
            return checked
        }
        for (index, value) in try reader.array(top["exports"], at: "exports").enumerated() {
            let at = "exports[\(index)]"
            try add(reader.export(value, at: at), from: .file(file, at: at))
        }
        for (index, value) in try reader.array(top["mirrors"], at: "mirrors").enumerated() {
            let at = "mirrors[\(index)]"
            try add(reader.mirror(value, at: at), from: .file(file, at: at))
        }
    }

    /// The command line on top of the file: each argument given replaces
    /// the file's value (nil means not given); `exports` and `mirrors`
    /// (`--export`/`--mirror` texts) are added after the file's.
    public mutating func applyCommandLine(listen: String? = nil, name: String? = nil, stateDirectory: String? = nil,
                                          control: String? = nil, tls: TLSFiles? = nil, exports: [String] = [],
                                          mirrors: [String] = [], lazyMirrors: Bool = false, metrics: String? = nil,
                                          faultTimeout: Double? = nil, liveness: String? = nil,
                                          memoryBudget: String? = nil, acceptMigrations: String? = nil,
                                          bulkQueue: String? = nil) throws {
        if let acceptMigrations { self.acceptMigrations = acceptMigrations }
        if let bulkQueue {
            guard let setting = BulkQueueSetting(text: bulkQueue) else {
                throw PeerConfigurationError("--bulk-queue \(bulkQueue): \(BulkQueueSetting.explanation)")
            }
            self.bulkQueue = setting
        }
        if let faultTimeout {
            guard faultTimeout > 0, faultTimeout <= 86400 else {
                throw PeerConfigurationError("--fault-timeout: \(faultTimeout) is not between 0 and 86400 seconds")
            }
            self.faultTimeout = .milliseconds(Int64(faultTimeout * 1000))
        }
        if let memoryBudget {
            guard let bytes = parseByteSize(memoryBudget), let checked = Self.checkedMemoryBudget(bytes) else {
                throw PeerConfigurationError("--memory-budget: '\(memoryBudget)': \(Self.memoryBudgetRule)")
            }
            self.memoryBudget = checked
        }
        if let listen {
            do {
                self.listen = try PeerAddress(parsing: listen)
            } catch {
                throw PeerConfigurationError("--listen: \(error)")
            }
        }
        if let metrics {
            do {
                self.metrics = try MetricsServer.address(parsing: metrics)
            } catch {
                throw PeerConfigurationError("--metrics: \(error)")
            }
        }
        if let liveness {
            guard let seconds = Double(liveness), let timeout = Self.livenessTimeout(seconds: seconds) else {
                throw PeerConfigurationError("--liveness \(liveness): \(Self.livenessExplanation)")
            }
            livenessTimeout = timeout
        }
        if let name { self.name = name }
        if let stateDirectory { self.stateDirectory = stateDirectory }
        if let control { self.control = control }
        if let tls { self.tls = tls }
        for text in exports {
            let spec: ExportSpec
            do { spec = try ExportSpec(parsing: text) } catch { throw PeerConfigurationError("--export: \(error)") }
            try add(spec, from: .flag("--export \(text)"))
        }
        for text in mirrors {
            let spec: MirrorSpec
            do { spec = try MirrorSpec(parsing: text, lazy: lazyMirrors) } catch { throw PeerConfigurationError("--mirror: \(error)") }
            try add(spec, from: .flag("--mirror \(text)"))
        }
    }

    private static var livenessExplanation: String {
        "expected seconds from \(livenessRange.lowerBound) to \(Int(livenessRange.upperBound)), such as 5 or 2.5"
    }

    /// `seconds` as a liveness timeout, nil when outside `livenessRange`.
    private static func livenessTimeout(seconds: Double) -> Duration? {
        guard seconds.isFinite, livenessRange.contains(seconds) else { return nil }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    private static let memoryBudgetRule =
        "expected a byte count of at least \(MemoryBudget.minimumLimit >> 20) MiB, such as 512M or 2G"

    private static func checkedMemoryBudget(_ bytes: Int) -> Int? {
        bytes >= MemoryBudget.minimumLimit ? bytes : nil
    }

    /// `listen`, or `:4433` (every interface) when nobody said.
    public var listenAddress: PeerAddress {
        get throws { try listen ?? PeerAddress(parsing: Self.defaultListen) }
    }

    private mutating func add(_ spec: ExportSpec, from origin: Origin) throws {
        if let twin = exports.firstIndex(where: { $0.name == spec.name }) {
            throw PeerConfigurationError("\(origin.field("name")): region '\(spec.name)' is exported twice (also \(exportOrigins[twin].mention(from: origin)))")
        }
        if let twin = mirrors.firstIndex(where: { Self.sameFile($0.path, spec.path) }) {
            throw PeerConfigurationError("\(origin.field("path")): \(spec.path) is also the local file of \(mirrorOrigins[twin].mention(from: origin))")
        }
        exports.append(spec)
        exportOrigins.append(origin)
    }

    private mutating func add(_ spec: MirrorSpec, from origin: Origin) throws {
        let twin = mirrors.firstIndex { Self.sameFile($0.path, spec.path) }.map { mirrorOrigins[$0] }
            ?? exports.firstIndex { Self.sameFile($0.path, spec.path) }.map { exportOrigins[$0] }
        if let twin {
            throw PeerConfigurationError("\(origin.field("path")): \(spec.path) is also the local file of \(twin.mention(from: origin))")
        }
        mirrors.append(spec)
        mirrorOrigins.append(origin)
    }

    /// Paths as written may differ ("./a", "a"); symbolic links are not followed.
    private static func sameFile(_ a: String, _ b: String) -> Bool {
        URL(fileURLWithPath: a).standardizedFileURL.path == URL(fileURLWithPath: b).standardizedFileURL.path
    }

    private static func read(_ file: String) throws -> [UInt8] {
        let descriptor = try FileDescriptor.open(FilePath(file), .readOnly, options: [.closeOnExec])
        defer { try? descriptor.close() }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try descriptor.read(into: $0) }
            if count == 0 { return bytes }
            bytes += buffer[..<count]
            if bytes.count > maximumFileSize {
                throw PeerConfigurationError("larger than \(maximumFileSize >> 20) MiB; is it the right file?")
            }
        }
    }

    /// A config file entry (`exports[1]` of FILE) or a flag (`--export TEXT`).
    private enum Origin: Sendable, Equatable {
        case file(String, at: String)
        case flag(String)

        /// Where an error about `name` points: `FILE: exports[1].name`, or the flag.
        func field(_ name: String) -> String {
            switch self {
            case .file(let file, let at): return "\(file): \(at).\(name)"
            case .flag(let text): return text
            }
        }

        /// How an error about `other` refers to this one.
        func mention(from other: Origin) -> String {
            switch (self, other) {
            case (.file(let file, let at), .file(let otherFile, _)) where file == otherFile: return at
            case (.file(let file, let at), _): return "\(at) of \(file)"
            case (.flag(let text), _): return text
            }
        }
    }

    /// Type-checks values of the parsed file; every error names the file and
    /// the path of the value.
    private struct Reader {
        let file: String
        let folder: String

        func failure(at path: String, _ message: String) -> PeerConfigurationError {
            PeerConfigurationError(path.isEmpty ? "\(file): \(message)" : "\(file): \(path): \(message)")
        }

        /// The fields of an object with only the keys allowed.
        func object(_ value: JSONValue, at path: String, keys allowed: [String]) throws -> [String: JSONValue] {
            guard case .object(let keys, let values) = value else {
                throw failure(at: path, "expected an object, found \(value.kind)")
            }
            if let unknown = keys.first(where: { !allowed.contains($0) }) {
                let prefix = path.isEmpty ? "" : path + "."
                throw failure(at: prefix + unknown, "unknown key; known keys: \(allowed.joined(separator: ", "))")
            }
            return values
        }

        func required(_ fields: [String: JSONValue], _ key: String, at path: String) throws -> JSONValue {
            guard let value = fields[key] else { throw failure(at: path, "missing required key '\(key)'") }
            return value
        }

        /// The elements of an array; none when the key is absent.
        func array(_ value: JSONValue?, at path: String) throws -> [JSONValue] {
            switch value {
            case nil: return []
            case .array(let elements)?: return elements
            case let other?: throw failure(at: path, "expected an array, found \(other.kind)")
            }
        }

        /// A positive number of seconds, at most a day.
        func seconds(_ value: JSONValue, at path: String) throws -> Duration {
            guard case .number(let text) = value, let seconds = Double(text), seconds > 0, seconds <= 86400 else {
                throw failure(at: path, "expected a number of seconds between 0 and 86400, found \(value.kind)")
            }
            return .milliseconds(Int64(seconds * 1000))
        }

        func bool(_ value: JSONValue, at path: String) throws -> Bool {
            guard case .bool(let b) = value else { throw failure(at: path, "expected true or false, found \(value.kind)") }
            return b
        }

        func string(_ value: JSONValue, at path: String) throws -> String {
            guard case .string(let text) = value else { throw failure(at: path, "expected a string, found \(value.kind)") }
            guard !text.isEmpty else { throw failure(at: path, "must not be empty") }
            return text
        }

        /// A file path; a relative one is taken from the config file's folder.
        func filePath(_ value: JSONValue, at path: String) throws -> String {
            let text = try string(value, at: path)
            return text.hasPrefix("/") ? text : URL(fileURLWithPath: folder + "/" + text).standardizedFileURL.path
        }

        /// 1048576, or "1M" (binary K, M, G, T suffixes, as on the command line).
        func byteCount(_ value: JSONValue, at path: String) throws -> Int {
            let explanation = "a positive whole number of bytes, or a string such as \"64K\" or \"1G\""
            let text: String, shown: String
            switch value {
            case .number(let number): (text, shown) = (number, number)
            case .string(let string): (text, shown) = (string, "\"\(string)\"")
            default: throw failure(at: path, "expected \(explanation), found \(value.kind)")
            }
            guard let count = parseByteSize(text) else {
                throw failure(at: path, "\(shown) is not a byte count: expected \(explanation)")
            }
            return count
        }

        /// Seconds, as a JSON number (`5`, `2.5`).
        func liveness(_ value: JSONValue, at path: String) throws -> Duration {
            guard case .number(let text) = value else {
                throw failure(at: path, "expected a number of seconds, found \(value.kind)")
            }
            guard let seconds = Double(text), let timeout = PeerConfiguration.livenessTimeout(seconds: seconds) else {
                throw failure(at: path, "\(text) is not a liveness timeout: \(PeerConfiguration.livenessExplanation)")
            }
            return timeout
        }

        /// Milliseconds as a JSON number (`2.5`), or the string "off".
        func bulkQueue(_ value: JSONValue, at path: String) throws -> BulkQueueSetting {
            let text: String
            switch value {
            case .number(let number): text = number
            case .string("off"): text = "off"
            default: throw failure(at: path, "\(BulkQueueSetting.explanation), found \(value.kind)")
            }
            guard let setting = BulkQueueSetting(text: text) else {
                throw failure(at: path, "\(text) is not a bulk queue allowance: \(BulkQueueSetting.explanation)")
            }
            return setting
        }

        func address(_ value: JSONValue, at path: String) throws -> PeerAddress {
            let text = try string(value, at: path)
            do {
                return try PeerAddress(parsing: text)
            } catch {
                throw failure(at: path, "\(error)")
            }
        }

        /// As `address`, but a bare `:PORT` is the loopback address.
        func metricsAddress(_ value: JSONValue, at path: String) throws -> PeerAddress {
            let text = try string(value, at: path)
            do {
                return try MetricsServer.address(parsing: text)
            } catch {
                throw failure(at: path, "\(error)")
            }
        }

        /// All three files, or nil for none.
        func tls(_ value: JSONValue, at path: String) throws -> TLSFiles? {
            let fields = try object(value, at: path, keys: ["cert", "key", "ca"])
            let cert = try fields["cert"].map { try filePath($0, at: path + ".cert") }
            let key = try fields["key"].map { try filePath($0, at: path + ".key") }
            let ca = try fields["ca"].map { try filePath($0, at: path + ".ca") }
            if let cert, let key, let ca { return TLSFiles(cert: cert, key: key, ca: ca) }
            guard cert == nil, key == nil, ca == nil else {
                throw failure(at: path, "cert, key and ca go together: give all three, or leave tls out to use the development CA")
            }
            return nil
        }

        func export(_ value: JSONValue, at path: String) throws -> ExportSpec {
            let fields = try object(value, at: path, keys: ["name", "path", "size", "chunk", "allow"])
            let name = try string(required(fields, "name", at: path), at: path + ".name")
            let regionFile = try filePath(required(fields, "path", at: path), at: path + ".path")
            let size = try fields["size"].map { try byteCount($0, at: path + ".size") }
            let chunk = try fields["chunk"].map { try byteCount($0, at: path + ".chunk") } ?? ExportSpec.defaultChunkSize
            let allow = try fields["allow"].map { list in
                try Set(array(list, at: path + ".allow").enumerated().map { try string($1, at: "\(path).allow[\($0)]") })
            }
            return try checked(at: path) {
                try ExportSpec(name: name, path: regionFile, size: size, chunkSize: chunk, allowedPeers: allow)
            }
        }

        func mirror(_ value: JSONValue, at path: String) throws -> MirrorSpec {
            let fields = try object(value, at: path, keys: ["name", "peer", "path", "lazy", "expect", "allow", "maxSize",
                                                            "durable"])
            let name = try string(required(fields, "name", at: path), at: path + ".name")
            let peer = try address(required(fields, "peer", at: path), at: path + ".peer")
            let regionFile = try filePath(required(fields, "path", at: path), at: path + ".path")
            let lazy = try fields["lazy"].map { try bool($0, at: path + ".lazy") } ?? false
            let expected = try fields["expect"].map { value in
                let text = try string(value, at: path + ".expect")
                do { return try ExpectedPeer(parsing: text) } catch { throw failure(at: path + ".expect", "\(error)") }
            }
            let allow = try fields["allow"].map { list in
                try Set(array(list, at: path + ".allow").enumerated().map { try string($1, at: "\(path).allow[\($0)]") })
            }
            let maxSize = try fields["maxSize"].map { try byteCount($0, at: path + ".maxSize") }
            let durable = try fields["durable"].map { try bool($0, at: path + ".durable") } ?? false
            return try checked(at: path) {
                try MirrorSpec(name: name, address: peer, path: regionFile, lazy: lazy, expectedPrimary: expected,
                               allowedPeers: allow, maxSize: maxSize, durable: durable)
            }
        }

        /// A spec's own rules, reported at the field they name (`exports[1].chunk`).
        private func checked<Spec>(at path: String, _ make: () throws -> Spec) throws -> Spec {
            do {
                return try make()
            } catch let error as SpecError {
                throw failure(at: error.field.map { path + "." + $0 } ?? path, error.description)
            }
        }
    }
}
