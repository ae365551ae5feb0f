import MemReplicaSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs iproute2's `ip` for the set-up steps that need it (creating and
/// deleting named namespaces, addresses, links), turning a failure into an
/// error that carries the command's stderr.
enum IPRoute {
    private static let counter = Locked(0)

    /// The `ip` binary; test runners and services often have no sbin on PATH.
    static func executable() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let candidates = path.split(separator: ":").map { "\($0)/ip" } + ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        guard let found = candidates.first(where: { access($0, X_OK) == 0 }) else { throw WANEmulatorError.ipMissing }
        return found
    }

    /// `ip ARGUMENTS…`; throws `commandFailed` with its stderr unless it exits 0.
    static func run(_ arguments: [String]) throws {
        let ip = try executable()
        let n = counter.withLock { value -> Int in
            value += 1
            return value
        }
        let errorPath = NSTemporaryDirectory() + "/mrwan-ip-\(getpid())-\(n).err"
        defer { unlink(errorPath) }
        let child = try ChildProcess(ip, arguments, errorPath: errorPath)
        let status = child.wait()
        guard status == 0 else {
            let stderr = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
            throw WANEmulatorError.commandFailed(command: (["ip"] + arguments).joined(separator: " "), status: status,
                                                 stderr: stderr.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}
