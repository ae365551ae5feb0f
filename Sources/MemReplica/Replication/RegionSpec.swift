/// `--export NAME=PATH[,size=BYTES][,chunk=BYTES][,allow=CN+CN...]` and
/// `--mirror NAME@HOST:PORT=PATH`, as typed on the command line or read
/// from a config file. Sizes take K, M, G, T suffixes (binary).
///
/// Both ways in end at the memberwise initializers, which hold every rule a
/// spec must meet (name, size, chunk size, a mirror's host); the parsers only
/// split text.
public struct ExportSpec: Sendable, Equatable {
    public var name: String
    public var path: String
    public var size: Int?
    public var chunkSize: Int
    public var allowedPeers: Set<String>?

    /// 64 KiB: 16 pages, so a chunk's WRITE frame is worth its header and
    /// a 1 GiB region is 16,384 chunks to scan and version.
    public static let defaultChunkSize = 64 << 10

    /// Checks the spec; a failure is a `SpecError` naming the field at fault.
    public init(name: String, path: String, size: Int? = nil, chunkSize: Int = defaultChunkSize,
                allowedPeers: Set<String>? = nil) throws {
        try validateName(name)
        guard !path.isEmpty else { throw SpecError("missing PATH", field: "path") }
        if let size, !RegionGeometry.isValid(size: size) {
            throw SpecError(RegionGeometry.Invalid.size(size).description, field: "size")
        }
        guard RegionGeometry.isValid(chunkSize: chunkSize) else {
            throw SpecError(RegionGeometry.Invalid.chunkSize(chunkSize).description, field: "chunk")
        }
        self.name = name
        self.path = path
        self.size = size
        self.chunkSize = chunkSize
        self.allowedPeers = allowedPeers
    }

    public init(parsing text: String) throws {
        func failure(_ reason: String) -> SpecError { SpecError("export '\(text)': \(reason)") }
        guard let eq = text.firstIndex(of: "=") else { throw failure("expected NAME=PATH[,size=BYTES]") }
        let rest = text[text.index(after: eq)...].split(separator: ",", omittingEmptySubsequences: false)
        var size: Int?
        var chunkSize = Self.defaultChunkSize
        var allowedPeers: Set<String>?
        for option in rest.dropFirst() {
            let kv = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw failure("option '\(option)' is not KEY=VALUE") }
            switch kv[0] {
            case "size":
                guard let v = parseByteSize(kv[1]) else { throw failure("bad size '\(kv[1])'") }
                size = v
            case "chunk":
                guard let v = parseByteSize(kv[1]) else { throw failure("bad chunk size '\(kv[1])'") }
                chunkSize = v
            case "allow":
                allowedPeers = Set(kv[1].split(separator: "+").map(String.init))
            default:
                throw failure("unknown option '\(kv[0])' (size, chunk, allow)")
            }
        }
        do {
            try self.init(name: String(text[..<eq]), path: rest.first.map(String.init) ?? "", size: size,
                          chunkSize: chunkSize, allowedPeers: allowedPeers)
        } catch let error as SpecError {
            throw failure(error.description)
        }
    }
}

public struct MirrorSpec: Sendable, Equatable {
    public var name: String
    public var address: PeerAddress
    public var path: String
    /// Post-copy: the replica is usable at once and pulls chunks on first
    /// touch; the primary sends DIRTY instead of bytes. Needs shared memory
    /// (a file under /dev/shm).
    public var lazy: Bool

    /// Checks the spec; a failure is a `SpecError` naming the field at fault.
    public init(name: String, address: PeerAddress, path: String, lazy: Bool = false) throws {
        try validateName(name)
        guard !address.isWildcard else { throw SpecError("the exporting peer needs a host", field: "peer") }
        guard !path.isEmpty else { throw SpecError("missing PATH", field: "path") }
        self.name = name
        self.address = address
        self.path = path
        self.lazy = lazy
    }

    public init(parsing text: String, lazy: Bool = false) throws {
        func failure(_ reason: String) -> SpecError { SpecError("mirror '\(text)': \(reason)") }
        guard let at = text.firstIndex(of: "@"), let eq = text.lastIndex(of: "="), at < eq else {
            throw failure("expected NAME@HOST:PORT=PATH")
        }
        let address = try PeerAddress(parsing: String(text[text.index(after: at)..<eq]))
        do {
            try self.init(name: String(text[..<at]), address: address, path: String(text[text.index(after: eq)...]), lazy: lazy)
        } catch let error as SpecError {
            throw failure(error.description)
        }
    }
}

public struct SpecError: Error, CustomStringConvertible, Equatable {
    public let description: String
    /// The setting at fault ("name", "path", "size", "chunk", "peer") when the
    /// memberwise initializers refuse one; nil for text that does not parse.
    public let field: String?

    init(_ description: String, field: String? = nil) {
        self.description = description
        self.field = field
    }
}

private func validateName(_ name: String) throws {
    guard !name.isEmpty, name.utf8.count <= FrameLimits.maxName, !name.contains(",") else {
        throw SpecError("region name '\(name)' must be 1 to \(FrameLimits.maxName) bytes without ','", field: "name")
    }
}

/// "64M" → 67108864; binary suffixes K, M, G, T.
public func parseByteSize(_ text: String) -> Int? {
    let t = text.uppercased()
    let units: [(String, Int)] = [("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)]
    for (suffix, mult) in units where t.hasSuffix(suffix) {
        guard let n = Int(t.dropLast()), n > 0, n <= Int.max / mult else { return nil }
        return n * mult
    }
    guard let n = Int(t), n > 0 else { return nil }
    return n
}
