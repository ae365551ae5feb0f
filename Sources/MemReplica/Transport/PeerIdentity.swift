/// The identity a peer proved during the mutual TLS handshake.
public struct PeerIdentity: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The certificate subject, e.g. `CN=peer-a,O=memreplica`.
    public var subject: String
    /// DNS subject alternative names.
    public var alternativeNames: [String]
    /// SHA-256 of the DER certificate, lower-case hex.
    public var fingerprint: String

    public init(subject: String, alternativeNames: [String], fingerprint: String) {
        self.subject = subject
        self.alternativeNames = alternativeNames
        self.fingerprint = fingerprint
    }

    /// The common name from the subject, the name peers are known by.
    public var commonName: String? {
        for part in subject.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == "CN" {
                return String(kv[1])
            }
        }
        return nil
    }

    public var description: String {
        "\(commonName ?? subject) (sha256 \(fingerprint.prefix(16))…)"
    }
}

import Foundation
