@testable import MemReplica
@testable import MemReplicaBench
@testable import MemReplicaQUIC
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Crypto
import Foundation
import Testing
import X509

/// Subjects built to pass for `peer-a` under a parser that splits the
/// printed subject on commas (escaped comma, a second CN, a CN hidden in
/// another attribute), in both certificate orders since the two TLS stacks
/// printed RDNs in opposite orders.
enum CraftedSubject: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case commaInCommonName
    case twoCommonNamesPeerAFirst
    case twoCommonNamesPeerALast
    case commonNameInUnitBefore
    case commonNameInUnitAfter
    case twoCommonNamesInOneRDN

    var testDescription: String { rawValue }

    var name: DistinguishedName {
        get throws {
            switch self {
            case .commaInCommonName:
                return try DistinguishedName { OrganizationName("memreplica"); CommonName("peer-b,CN=peer-a") }
            case .twoCommonNamesPeerAFirst:
                return try DistinguishedName { CommonName("peer-a"); CommonName("peer-b") }
            case .twoCommonNamesPeerALast:
                return try DistinguishedName { CommonName("peer-b"); CommonName("peer-a") }
            case .commonNameInUnitBefore:
                return try DistinguishedName { OrganizationalUnitName("x,CN=peer-a"); CommonName("peer-b") }
            case .commonNameInUnitAfter:
                return try DistinguishedName { CommonName("peer-b"); OrganizationalUnitName("x,CN=peer-a") }
            case .twoCommonNamesInOneRDN:
                return DistinguishedName([RelativeDistinguishedName([
                    .init(type: .RDNAttributeType.commonName, utf8String: "peer-a"),
                    .init(type: .RDNAttributeType.commonName, utf8String: "peer-b"),
                ])])
            }
        }
    }

    /// What `PeerIdentity.commonName` must be: the one CN when there is one.
    var expectedCommonName: String? {
        switch self {
        case .commaInCommonName: "peer-b,CN=peer-a"
        case .commonNameInUnitBefore, .commonNameInUnitAfter: "peer-b"
        case .twoCommonNamesPeerAFirst, .twoCommonNamesPeerALast, .twoCommonNamesInOneRDN: nil
        }
    }
}

/// A test CA (`TestPKI`: "server" and "peer-a") that also signs
/// certificates with hand-made subjects.
struct CraftedPKI {
    let base: TestPKI
    private let caKey: P256.Signing.PrivateKey
    private let ca: Certificate

    init() throws {
        base = try TestPKI(peers: ("server", "peer-a"))
        let layout = CertificateAuthority.Layout(directory: base.directory)
        caKey = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: layout.caKey, encoding: .utf8))
        ca = try Certificate(pemEncoded: String(contentsOfFile: layout.caCertificate, encoding: .utf8))
    }

    /// A certificate for `subject` (files named after `label`), signed by
    /// the CA, with its DER bytes.
    func issue(_ label: String, subject: DistinguishedName) throws -> (tls: TLSConfiguration, der: [UInt8]) {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(86400),
            issuer: ca.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
            },
            issuerPrivateKey: .init(caKey))
        let certificateFile = base.directory + "/\(label).pem", keyFile = base.directory + "/\(label)-key.pem"
        try certificate.serializeAsPEM().pemString.write(toFile: certificateFile, atomically: true, encoding: .utf8)
        try key.pemRepresentation.write(toFile: keyFile, atomically: true, encoding: .utf8)
        return (TLSConfiguration(caFile: base.server.tls.caFile, certificateFile: certificateFile, keyFile: keyFile),
                try certificate.serializeAsPEM().derBytes)
    }

    func remove() { base.remove() }
}

@Suite("Certificate identity")
struct CertificateIdentityTests {
    @Test("the name is the subject's only CN, parsed from DER; several CNs give none", arguments: CraftedSubject.allCases)
    func parsedIdentity(_ crafted: CraftedSubject) throws {
        let pki = try CraftedPKI()
        defer { pki.remove() }
        let (_, der) = try pki.issue(crafted.rawValue, subject: try crafted.name)
        let identity = PeerIdentity(certificate: der)
        #expect(identity.commonName == crafted.expectedCommonName)
        #expect(identity.commonName != "peer-a")
        #expect(identity.fingerprint == sha256Hex(der))
        // The display string (RFC 4514 order) escapes commas inside values.
        switch crafted {
        case .commaInCommonName: #expect(identity.subject == #"CN=peer-b\,CN=peer-a,O=memreplica"#)
        case .commonNameInUnitBefore: #expect(identity.subject == #"CN=peer-b,OU=x\,CN=peer-a"#)
        default: break
        }
    }

    @Test("a certificate that does not parse keeps its fingerprint and has no name")
    func unparsable() {
        let garbage: [UInt8] = [0x30, 0x03, 0x02, 0x01, 0x05]
        let identity = PeerIdentity(certificate: garbage)
        #expect(identity.commonName == nil && identity.subject.isEmpty)
        #expect(identity.fingerprint == sha256Hex(garbage))
    }

    @Test("crafted subjects are never taken for peer-a, as client or as server", arguments: TransportKind.allCases)
    func handshakes(_ kind: TransportKind) async throws {
        let pki = try CraftedPKI()
        defer { pki.remove() }
        // The genuine peer-a is peer-a on both sides.
        let genuine = try TransportPair(kind, pki: pki.base)
        let (client, server) = try await genuine.connect()
        #expect(server.peerIdentity.commonName == "peer-a")
        #expect(client.peerIdentity.commonName == "server")
        await genuine.close()

        var subjects: [String: String] = [:]
        for crafted in CraftedSubject.allCases {
            let (tls, der) = try pki.issue(crafted.rawValue, subject: try crafted.name)
            // As a client: the server names it.
            let asClient = try TransportPair(kind, pki: pki.base, clientTLS: tls)
            let (_, serverSide) = try await asClient.connect("\(crafted) as client")
            #expect(serverSide.peerIdentity.commonName == crafted.expectedCommonName, "\(crafted)")
            #expect(serverSide.peerIdentity.fingerprint == sha256Hex(der))
            subjects[crafted.rawValue] = serverSide.peerIdentity.subject
            await asClient.close()
            // As a server: a genuine peer-a client names it.
            let server = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: tls,
                                                configuration: quicConfig(server: true), logger: testLogger)
            let peerA = try kind.makeTransport(bind: PeerAddress(parsing: "127.0.0.1:0"), tls: pki.base.client.tls,
                                               configuration: quicConfig(server: false), logger: testLogger)
            let address = try PeerAddress(host: "127.0.0.1", port: server.localAddress.port)
            async let accepted = server.accept()
            let clientSide = try await withTimeout(10, "\(crafted) as server") { try await peerA.connect(to: address) }
            #expect(clientSide.peerIdentity.commonName == crafted.expectedCommonName, "\(crafted)")
            #expect(await accepted?.peerIdentity.commonName == "peer-a")
            await peerA.close()
            await server.close()
        }
        // Both transports describe a certificate the same way.
        let (_, der) = try pki.issue("reference", subject: try CraftedSubject.commonNameInUnitBefore.name)
        #expect(subjects[CraftedSubject.commonNameInUnitBefore.rawValue] == PeerIdentity(certificate: der).subject)
    }

    @Test("allow=peer-a refuses crafted certificates and serves the genuine peer-a", arguments: TransportKind.allCases)
    func allowList(_ kind: TransportKind) async throws {
        let pki = try CraftedPKI()
        defer { pki.remove() }
        let primary = try Region(name: "secret", backing: .memory, size: 256 << 10, chunkSize: 65536)
        fillPattern(primary.bytes, seed: 12)
        let exports = RegionExports([.init(region: primary, allowedPeers: ["peer-a"])], logger: testLogger)

        func mirror(as tls: TLSConfiguration) async throws -> (Region, ReplicationError?) {
            let pair = try TransportPair(kind, pki: pki.base, clientTLS: tls)
            let (client, server) = try await pair.connect()
            let serving = Task {
                await withDiscardingTaskGroup { group in
                    while let stream = try? await server.acceptStream() {
                        group.addTask { await exports.serve(stream, peer: server.peerIdentity) }
                    }
                }
            }
            let replica = try Region(name: "secret", backing: .memory, size: 256 << 10, chunkSize: 65536)
            let mirror = RegionMirror(region: replica)
            let ended = Locked<(done: Bool, error: ReplicationError?)>((false, nil))
            let running = Task {
                do { try await mirror.run(over: client) } catch { ended.withLock { $0.error = error as? ReplicationError } }
                ended.withLock { $0.done = true }
            }
            // A refused mirror ends; an accepted one converges and keeps running.
            try await withTimeout(10, "mirror as \(tls.certificateFile ?? "?")") {
                while !mirror.initialSyncComplete && !ended.withLock({ $0.done }) {
                    try await Task.sleep(for: .milliseconds(10))
                }
            }
            // Closing the connections ends both the mirror and the serving.
            running.cancel()
            serving.cancel()
            await pair.close()
            await running.value
            await serving.value
            return (replica, ended.withLock { $0.error })
        }

        for crafted in CraftedSubject.allCases {
            let (tls, _) = try pki.issue(crafted.rawValue, subject: try crafted.name)
            let (replica, refusal) = try await mirror(as: tls)
            guard case .refusedByPeer(let code, _)? = refusal else {
                Issue.record("\(crafted) was not refused (\(String(describing: refusal)))")
                continue
            }
            // Refused as if the region did not exist (its name is not confirmed).
            #expect(code == ProtocolErrorCode.unknownRegion.rawValue, "\(crafted)")
            #expect(regionSHA(replica) != regionSHA(primary), "\(crafted) got the bytes")
        }
        let (replica, refusal) = try await mirror(as: pki.base.client.tls)
        #expect(refusal == nil)
        #expect(regionSHA(replica) == regionSHA(primary))
    }
}
