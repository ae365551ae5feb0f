import MemReplicaTransportCore
/// `--export NAME=PATH[,size=BYTES][,chunk=BYTES][,allow=CN+CN...]` and
/// `--mirror NAME@HOST:PORT=PATH[,OPTION=VALUE...]`, as typed on the command line or read
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
    /// Who must answer at `address`: the mirror refuses any other peer,
    /// even one the CA signed. Nil trusts every CA-signed peer (the CLI
    /// warns).
    public var expectedPrimary: ExpectedPeer?
    /// The replica's own narrowing of the primary's allow list for the
    /// peers it serves the region to (HTTP/3); nil keeps the primary's.
    public var allowedPeers: Set<String>?
    /// The largest region this mirror accepts from the catalog, in bytes;
    /// nil: whatever the file system holding `path` has free.
    public var maxSize: Int?
    /// DRBD protocol C: every chunk reaches stable storage before it is
    /// acknowledged, and a state file says whether the copy is complete.
    public var durable: Bool

    /// Checks the spec; a failure is a `SpecError` naming the field at fault.
    public init(name: String, address: PeerAddress, path: String, lazy: Bool = false, expectedPrimary: ExpectedPeer? = nil,
                allowedPeers: Set<String>? = nil, maxSize: Int? = nil, durable: Bool = false) throws {
        try validateName(name)
        guard !address.isWildcard else { throw SpecError("the exporting peer needs a host", field: "peer") }
        guard !path.isEmpty else { throw SpecError("missing PATH", field: "path") }
        if let maxSize, maxSize <= 0 { throw SpecError("max-size must be positive", field: "maxSize") }
        if durable && lazy {
            throw SpecError("a lazy mirror cannot be durable: it holds only what was touched", field: "durable")
        }
        self.name = name
        self.address = address
        self.path = path
        self.lazy = lazy
        self.expectedPrimary = expectedPrimary
        self.allowedPeers = allowedPeers
        self.maxSize = maxSize
        self.durable = durable
    }

    /// `NAME@HOST:PORT=PATH[,peer=CN|sha256=HEX][,allow=CN+CN][,max-size=BYTES][,durable=true]`.
    public init(parsing text: String, lazy: Bool = false) throws {
        func failure(_ reason: String) -> SpecError { SpecError("mirror '\(text)': \(reason)") }
        guard let at = text.firstIndex(of: "@"),
              let eq = text[text.index(after: at)...].firstIndex(of: "=") else {
            throw failure("expected NAME@HOST:PORT=PATH[,peer=CN|sha256=FINGERPRINT][,allow=CN+CN][,max-size=BYTES][,durable=true]")
        }
        let address = try PeerAddress(parsing: String(text[text.index(after: at)..<eq]))
        let rest = text[text.index(after: eq)...].split(separator: ",", omittingEmptySubsequences: false)
        var expected: ExpectedPeer?
        var allowed: Set<String>?
        var maxSize: Int?
        var durable = false
        for option in rest.dropFirst() {
            let kv = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw failure("option '\(option)' is not KEY=VALUE") }
            switch kv[0] {
            case "peer", "sha256":
                guard expected == nil else { throw failure("give one of peer= and sha256=") }
                do { expected = try ExpectedPeer(parsing: option) } catch let e as SpecError { throw failure(e.description) }
            case "allow":
                allowed = Set(kv[1].split(separator: "+").map(String.init))
            case "max-size":
                guard let v = parseByteSize(kv[1]) else { throw failure("bad max-size '\(kv[1])'") }
                maxSize = v
            case "durable":
                guard let v = Bool(kv[1]) else { throw failure("durable is true or false, not '\(kv[1])'") }
                durable = v
            default:
                throw failure("unknown option '\(kv[0])' (peer, sha256, allow, max-size, durable)")
            }
        }
        do {
            try self.init(name: String(text[..<at]), address: address, path: rest.first.map(String.init) ?? "", lazy: lazy,
                          expectedPrimary: expected, allowedPeers: allowed, maxSize: maxSize, durable: durable)
        } catch let error as SpecError {
            throw failure(error.description)
        }
    }
}

/// The identity a mirror demands of the peer it connects to: a certificate
/// common name (`peer=CN`) or the SHA-256 fingerprint of the certificate
/// (`sha256=HEX`, colons allowed), as `status` and the peer's log show it.
public enum ExpectedPeer: Sendable, Equatable, CustomStringConvertible {
    case commonName(String)
    case fingerprint(String)

    public init(parsing text: some StringProtocol) throws {
        let kv = String(text).split(separator: "=", maxSplits: 1).map(String.init)
        guard kv.count == 2, !kv[1].isEmpty else { throw SpecError("expected peer=CN or sha256=FINGERPRINT", field: "expect") }
        switch kv[0] {
        case "peer":
            self = .commonName(kv[1])
        case "sha256":
            let hex = kv[1].lowercased().filter { $0 != ":" }
            guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit }) else {
                throw SpecError("sha256= takes the certificate's SHA-256 fingerprint, 64 hex digits", field: "expect")
            }
            self = .fingerprint(hex)
        default:
            throw SpecError("expected peer=CN or sha256=FINGERPRINT, not '\(kv[0])='", field: "expect")
        }
    }

    public func matches(_ identity: PeerIdentity) -> Bool {
        switch self {
        case .commonName(let name): return identity.commonName == name
        case .fingerprint(let hex): return identity.fingerprint.lowercased() == hex
        }
    }

    public var description: String {
        switch self {
        case .commonName(let name): return "peer=\(name)"
        case .fingerprint(let hex): return "sha256=\(hex)"
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
