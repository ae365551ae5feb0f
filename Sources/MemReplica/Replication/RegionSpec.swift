/// `--export NAME=PATH[,size=BYTES][,chunk=BYTES][,allow=CN+CN...]` and
/// `--mirror NAME@HOST:PORT=PATH`, as typed on the command line or in a
/// config file. Sizes take K, M, G suffixes (binary).
public struct ExportSpec: Sendable, Equatable {
    public var name: String
    public var path: String
    public var size: Int?
    public var chunkSize: Int
    public var allowedPeers: Set<String>?

    /// 64 KiB: 16 pages, so a chunk's WRITE frame is worth its header and
    /// a 1 GiB region is 16,384 chunks to scan and version.
    public static let defaultChunkSize = 64 << 10

    public init(parsing text: String) throws {
        guard let eq = text.firstIndex(of: "=") else { throw SpecError("export '\(text)': expected NAME=PATH[,size=BYTES]") }
        name = String(text[..<eq])
        let rest = text[text.index(after: eq)...].split(separator: ",", omittingEmptySubsequences: false)
        guard let first = rest.first, !first.isEmpty else { throw SpecError("export '\(text)': missing PATH") }
        path = String(first)
        size = nil
        chunkSize = Self.defaultChunkSize
        allowedPeers = nil
        for option in rest.dropFirst() {
            let kv = option.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw SpecError("export '\(text)': option '\(option)' is not KEY=VALUE") }
            switch kv[0] {
            case "size":
                guard let v = parseByteSize(kv[1]) else { throw SpecError("export '\(text)': bad size '\(kv[1])'") }
                size = v
            case "chunk":
                guard let v = parseByteSize(kv[1]) else { throw SpecError("export '\(text)': bad chunk size '\(kv[1])'") }
                chunkSize = v
            case "allow":
                allowedPeers = Set(kv[1].split(separator: "+").map(String.init))
            default:
                throw SpecError("export '\(text)': unknown option '\(kv[0])' (size, chunk, allow)")
            }
        }
        try validateName(name, in: text)
    }
}

public struct MirrorSpec: Sendable, Equatable {
    public var name: String
    public var address: PeerAddress
    public var path: String

    public init(parsing text: String) throws {
        guard let at = text.firstIndex(of: "@"), let eq = text.lastIndex(of: "="), at < eq else {
            throw SpecError("mirror '\(text)': expected NAME@HOST:PORT=PATH")
        }
        name = String(text[..<at])
        address = try PeerAddress(parsing: String(text[text.index(after: at)..<eq]))
        path = String(text[text.index(after: eq)...])
        guard !path.isEmpty else { throw SpecError("mirror '\(text)': missing PATH") }
        guard !address.isWildcard else { throw SpecError("mirror '\(text)': the exporting peer needs a host") }
        try validateName(name, in: text)
    }
}

public struct SpecError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
}

private func validateName(_ name: String, in text: String) throws {
    guard !name.isEmpty, name.utf8.count <= FrameLimits.maxName, !name.contains(",") else {
        throw SpecError("'\(text)': a region name is 1 to \(FrameLimits.maxName) bytes without ','")
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
