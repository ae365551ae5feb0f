/// The identity a peer proved during the mutual TLS handshake.
///
/// Both transports make it the same way, from the DER certificate alone
/// (`init(certificate:)`), so a name can never mean one thing on QUIC and
/// another on TCP.
public struct PeerIdentity: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The certificate subject for display, RFC 4514 style (last RDN first,
    /// special characters escaped), e.g. `CN=peer-a,O=memreplica`. Never
    /// parse it: `commonName` is the name peers are known by.
    public var subject: String
    /// The value of the subject's common name (CN) attribute, when the
    /// subject holds exactly one CN and it is a non-empty string. A
    /// certificate with no CN or with several has none: such a peer matches
    /// no allow list and no expected name.
    public var commonName: String?
    /// DNS subject alternative names.
    public var alternativeNames: [String]
    /// SHA-256 of the DER certificate, lower-case hex.
    public var fingerprint: String

    public init(subject: String, commonName: String?, alternativeNames: [String], fingerprint: String) {
        self.subject = subject
        self.commonName = commonName
        self.alternativeNames = alternativeNames
        self.fingerprint = fingerprint
    }

    /// No certificate (yet): before a handshake, or a context without one.
    public static let none = PeerIdentity(subject: "", commonName: nil, alternativeNames: [], fingerprint: "")

    public var description: String {
        "\(commonName ?? subject) (sha256 \(fingerprint.prefix(16))…)"
    }
}
