/// What a peer can receive beyond protocol version 2's frames, as HELLO's
/// `capabilities` bits (docs/PROTOCOL.md §2). A mirror's HELLO says what it
/// takes; an exporter uses, on that connection's region streams, only what
/// the mirror offered and it supports. Unknown bits are ignored.
public struct WireCapabilities: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// PAGES frames: zero pages named, unchanged pages left out.
    public static let pages = WireCapabilities(rawValue: 1 << 0)
    /// PAGES payloads compressed with zstd.
    public static let zstd = WireCapabilities(rawValue: 1 << 1)
    /// PAGES payloads compressed with lz4.
    public static let lz4 = WireCapabilities(rawValue: 1 << 2)

    /// An eager subscription's large passes spread over several streams
    /// (LANES): the mirror opens the lane streams it is asked for.
    public static let lanes = WireCapabilities(rawValue: 1 << 3)

    /// Everything this build can receive.
    public static let all: WireCapabilities = [.pages, .zstd, .lz4, .lanes]

    /// The codecs these capabilities take, best ratio first.
    public var codecs: [PageCodec] {
        guard contains(.pages) else { return [] }
        return (contains(.zstd) ? [.zstd] : []) + (contains(.lz4) ? [.lz4] : [])
    }

    public var description: String {
        var names: [String] = []
        if contains(.pages) { names.append("pages") }
        if contains(.zstd) { names.append("zstd") }
        if contains(.lz4) { names.append("lz4") }
        if contains(.lanes) { names.append("lanes") }
        return names.isEmpty ? "none" : names.joined(separator: "+")
    }
}
