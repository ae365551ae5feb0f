import MemReplicaTransportCore
import MemReplicaQUIC
import Foundation
import Logging
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The folder a peer keeps its local state in: the default control socket
/// and, when no certificates are named, a development PKI.
///
/// Resolution order: `--state-dir`, `$MEMREPLICA_STATE_DIR`,
/// `$XDG_STATE_HOME/memreplica`, `~/.local/state/memreplica`. The folder is
/// created 0700 because it holds a CA key and a socket that answers status.
public struct StateDirectory: Sendable, Hashable {
    public let path: String

    public static let environmentVariable = "MEMREPLICA_STATE_DIR"

    /// Resolves the folder without touching the file system (a status query
    /// must not create folders); `create()` makes it.
    public init(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment) {
        path = Self.resolve(explicit: explicit, environment: environment)
    }

    /// Makes the folder (0700) if it does not exist yet.
    public func create() throws {
        try Self.createPrivateDirectory(path)
    }

    static func resolve(explicit: String?, environment: [String: String]) -> String {
        let chosen: String
        if let explicit, !explicit.isEmpty {
            chosen = explicit
        } else if let fromEnv = environment[environmentVariable], !fromEnv.isEmpty {
            chosen = fromEnv
        } else if let xdg = environment["XDG_STATE_HOME"], xdg.hasPrefix("/") {
            // The XDG spec says a relative XDG_STATE_HOME is invalid and must be ignored.
            chosen = xdg + "/memreplica"
        } else {
            chosen = homeDirectory(environment) + "/.local/state/memreplica"
        }
        return URL(fileURLWithPath: chosen).standardizedFileURL.path
    }

    /// Where `memreplica peer` listens for `memreplica status` by default.
    public var controlSocketPath: String { path + "/control.sock" }

    /// Development CA and certificates, made on first use.
    public var developmentPKIPath: String { path + "/dev-pki" }

    /// TLS files for `peerName` signed by this folder's development CA,
    /// creating the CA and the certificate the first time they are needed.
    /// Every process using the same folder shares the CA, so they trust
    /// each other and nobody else.
    public func developmentTLS(peerName: String, logger: Logger) throws -> TLSConfiguration {
        let directory = developmentPKIPath
        try create()
        try Self.createPrivateDirectory(directory)
        // A peer and a ping started together must not both mint a CA.
        let lock = try FileDescriptor.open(FilePath(directory + "/.lock"), .writeOnly,
                                           options: [.create, .closeOnExec], permissions: [.ownerReadWrite])
        defer { try? lock.close() }
        try Self.lockExclusively(lock)

        let layout = CertificateAuthority.Layout(directory: directory)
        let files = layout.files(for: peerName)
        let fm = FileManager.default
        let caExisted = fm.fileExists(atPath: layout.caCertificate) && fm.fileExists(atPath: layout.caKey)
        if !(caExisted && fm.fileExists(atPath: files.certificate) && fm.fileExists(atPath: files.key)) {
            try CertificateAuthority.initialize(directory: directory, peers: [peerName], force: true)
            logger.notice("created development certificate for '\(peerName)'\(caExisted ? "" : " and a new development CA") in \(directory)")
        }
        logger.notice("using a development CA at \(directory) (for trying memreplica out only; real deployments use 'memreplica certs init' and --cert/--key/--ca)")
        return files.tls
    }

    private static func homeDirectory(_ environment: [String: String]) -> String {
        if let home = environment["HOME"], !home.isEmpty { return home }
        return NSHomeDirectory()
    }

    private static func createPrivateDirectory(_ path: String) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw StateDirectoryError.notADirectory(path) }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateDirectoryError.cannotCreate(path, reason: (error as NSError).localizedDescription)
        }
    }

    private static func lockExclusively(_ fd: FileDescriptor) throws {
        while flock(fd.rawValue, LOCK_EX) != 0 {
            let e = Errno(rawValue: errno)
            if e != .interrupted { throw StateDirectoryError.cannotLock(reason: e.description) }
        }
    }
}
