import MemReplicaSystem
import Crypto
import SwiftASN1
import X509

extension PeerIdentity {
    /// The identity in a DER certificate, parsed with swift-certificates:
    /// the one place either transport turns a certificate into a name.
    ///
    /// The TLS stack has verified the certificate before this runs. If it
    /// still cannot be parsed here, the identity keeps only the fingerprint
    /// (no subject, no name): the peer can be pinned by `sha256=` but never
    /// matches a name.
    public init(certificate der: [UInt8]) {
        let fingerprint = hexString(SHA256.hash(data: der))
        guard let certificate = try? Certificate(derEncoded: der) else {
            self.init(subject: "", commonName: nil, alternativeNames: [], fingerprint: fingerprint)
            return
        }
        var names: [String] = []
        if let san = try? certificate.extensions.subjectAlternativeNames {
            for name in san { if case .dnsName(let n) = name { names.append(n) } }
        }
        self.init(subject: String(describing: certificate.subject),
                  commonName: Self.soleCommonName(of: certificate.subject),
                  alternativeNames: names, fingerprint: fingerprint)
    }

    /// The CN value when `name` holds exactly one CN attribute (across all
    /// of its RDNs, multi-valued ones included) and it is a non-empty
    /// string; otherwise nil. Which of two CNs "is" the peer has no answer
    /// a verifier and an attacker agree on, so neither is taken.
    static func soleCommonName(of name: DistinguishedName) -> String? {
        var found: [RelativeDistinguishedName.Attribute.Value] = []
        for rdn in name {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                found.append(attribute.value)
            }
        }
        guard found.count == 1, let value = String(found[0]), !value.isEmpty else { return nil }
        return value
    }
}
