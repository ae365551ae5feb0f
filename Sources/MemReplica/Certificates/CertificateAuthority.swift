import MemReplicaTransportCore
import MemReplicaQUIC
import Crypto
import Foundation
import SwiftASN1
import X509

/// Makes a private CA and per-peer certificates (ECDSA P-256) for mutual
/// TLS. Keys are written 0600 and never leave the directory they are made in.
public enum CertificateAuthority {
    public struct PeerFiles: Sendable, Hashable {
        public var name: String
        public var certificate: String
        public var key: String
        public var tls: TLSConfiguration
    }

    public struct Layout: Sendable {
        public var directory: String
        public var caCertificate: String { directory + "/ca.pem" }
        public var caKey: String { directory + "/ca-key.pem" }
        public func certificate(for peer: String) -> String { directory + "/\(peer).pem" }
        public func key(for peer: String) -> String { directory + "/\(peer)-key.pem" }
        public func files(for peer: String) -> PeerFiles {
            PeerFiles(name: peer, certificate: certificate(for: peer), key: key(for: peer),
                      tls: TLSConfiguration(caFile: caCertificate, certificateFile: certificate(for: peer),
                                            keyFile: key(for: peer)))
        }
        public init(directory: String) { self.directory = directory }
    }

    public enum Failure: Error, CustomStringConvertible {
        case badPeerName(String)
        case existing(String)
        public var description: String {
            switch self {
            case .badPeerName(let n):
                return "bad peer name '\(n)': use letters, digits, '.', '-' and '_' (1 to 63 characters)"
            case .existing(let path):
                return "\(path) already exists; pass --force to replace it"
            }
        }
    }

    /// Creates `ca.pem`/`ca-key.pem` (unless a CA is already there) and a
    /// certificate and key for each peer. Returns the peers' files.
    @discardableResult
    public static func initialize(directory: String, peers: [String], validDays: Int = 825,
                                  force: Bool = false) throws -> [PeerFiles] {
        for p in peers where !isValidName(p) { throw Failure.badPeerName(p) }
        let layout = Layout(directory: directory)
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true,
                               attributes: [.posixPermissions: 0o700])
        let caKey: P256.Signing.PrivateKey
        let caCert: Certificate
        if fm.fileExists(atPath: layout.caKey), fm.fileExists(atPath: layout.caCertificate) {
            caKey = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: layout.caKey, encoding: .utf8))
            caCert = try Certificate(pemEncoded: String(contentsOfFile: layout.caCertificate, encoding: .utf8))
        } else {
            caKey = P256.Signing.PrivateKey()
            caCert = try makeCA(key: caKey, validDays: max(validDays, 3650))
            try write(caKey.pemRepresentation, to: layout.caKey, mode: 0o600)
            try write(caCert.serializeAsPEM().pemString, to: layout.caCertificate, mode: 0o644)
        }
        var out: [PeerFiles] = []
        for peer in peers {
            let files = layout.files(for: peer)
            if !force, fm.fileExists(atPath: files.certificate) { throw Failure.existing(files.certificate) }
            let key = P256.Signing.PrivateKey()
            let cert = try makePeer(name: peer, key: key, caKey: caKey, ca: caCert, validDays: validDays)
            try write(key.pemRepresentation, to: files.key, mode: 0o600)
            try write(cert.serializeAsPEM().pemString, to: files.certificate, mode: 0o644)
            out.append(files)
        }
        return out
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 63 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    private static func makeCA(key: P256.Signing.PrivateKey, validDays: Int) throws -> Certificate {
        let name = try DistinguishedName {
            OrganizationName("memreplica")
            CommonName("memreplica CA \(UUID().uuidString.prefix(8))")
        }
        let now = Date()
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(Double(validDays) * 86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
    }

    private static func makePeer(name: String, key: P256.Signing.PrivateKey, caKey: P256.Signing.PrivateKey,
                                 ca: Certificate, validDays: Int) throws -> Certificate {
        let subject = try DistinguishedName {
            OrganizationName("memreplica")
            CommonName(name)
        }
        let now = Date()
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(Double(validDays) * 86400),
            issuer: ca.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames([.dnsName(name)])
                SubjectKeyIdentifier(hash: .init(key.publicKey))
                AuthorityKeyIdentifier(keyIdentifier: try ca.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(caKey))
    }

    private static func write(_ text: String, to path: String, mode: Int) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: path) { try fm.removeItem(atPath: path) }
        guard fm.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }
}
