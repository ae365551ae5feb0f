import Foundation

/// Default certificate names for the development PKI. Certificate names
/// allow only letters, digits, '.', '-' and '_', so the hostname is
/// cleaned up rather than rejected.
public enum PeerName {
    /// The name a listening peer gets: the hostname.
    public static var hostDefault: String { sanitized(ProcessInfo.processInfo.hostName) }

    /// The name `memreplica ping` gets, distinct from the peer on the same host.
    public static var clientDefault: String { String(hostDefault.prefix(56)) + "-client" }

    static func sanitized(_ raw: String) -> String {
        // The short hostname: a fully qualified one is long and says little more.
        let short = raw.split(separator: ".").first.map(String.init) ?? ""
        let cleaned = String(short.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") ? $0 : "-" })
        let trimmed = String(cleaned.prefix(63))
        return trimmed.isEmpty ? "memreplica-peer" : trimmed
    }
}
