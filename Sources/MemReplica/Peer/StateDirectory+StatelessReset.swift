import MemReplicaQUIC
import Foundation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension StateDirectory {
    /// Where the QUIC stateless reset key lives.
    public var statelessResetKeyPath: String { path + "/quic-reset.key" }

    /// The peer's QUIC stateless reset key (`StatelessResetKey`), made on
    /// first use: 32 random bytes in `quic-reset.key`, mode 0600, written to
    /// a temporary file and linked into place, so a crash never leaves half
    /// a key and two peers starting together on one folder agree on one.
    /// Keeping it across restarts is what lets a restarted peer reset the
    /// connections of its previous life.
    ///
    /// A key file of the wrong size, not a regular file, or readable by
    /// anyone but its owner is refused (the error says how to fix it).
    public func statelessResetKey() throws -> StatelessResetKey {
        try create()
        let file = statelessResetKeyPath
        if let key = try Self.readResetKey(file) { return key }
        let temporary = path + "/.quic-reset.key.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(temporary) }
        do {
            let fd = try FileDescriptor.open(FilePath(temporary), .writeOnly,
                                             options: [.create, .exclusiveCreate, .closeOnExec],
                                             permissions: [.ownerReadWrite])
            try fd.closeAfter {
                _ = try fd.writeAll(StatelessResetKey.random().bytes)
                guard fsync(fd.rawValue) == 0 else { throw Errno(rawValue: errno) }
            }
        } catch {
            throw StateDirectoryError.resetKey(file, reason: "cannot write it: \(error)")
        }
        // link(2) fails with EEXIST when another process made it first: its
        // key wins, and both use it.
        if link(temporary, file) != 0 && errno != EEXIST {
            throw StateDirectoryError.resetKey(file, reason: "cannot create it: \(Errno(rawValue: errno))")
        }
        Self.syncDirectory(path)
        guard let key = try Self.readResetKey(file) else {
            throw StateDirectoryError.resetKey(file, reason: "it vanished as it was made")
        }
        return key
    }

    /// The key in `file`, nil when there is no such file.
    private static func readResetKey(_ file: String) throws -> StatelessResetKey? {
        let fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw StateDirectoryError.resetKey(file, reason: "cannot open it: \(Errno(rawValue: errno))")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw StateDirectoryError.resetKey(file, reason: "cannot stat it: \(Errno(rawValue: errno))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw StateDirectoryError.resetKey(file, reason: "not a regular file; remove it to make a new key")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw StateDirectoryError.resetKey(
                file, reason: "readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it, or remove it to make a new key")
        }
        var bytes = [UInt8](repeating: 0, count: StatelessResetKey.length + 1)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else {
            throw StateDirectoryError.resetKey(file, reason: "cannot read it: \(Errno(rawValue: errno))")
        }
        guard let key = StatelessResetKey(bytes: Array(bytes[..<count])) else {
            throw StateDirectoryError.resetKey(
                file, reason: "holds \(count > StatelessResetKey.length ? "more than \(StatelessResetKey.length)" : "\(count)") bytes, not \(StatelessResetKey.length); remove it to make a new key")
        }
        return key
    }

    /// Makes a new entry in `directory` durable (best effort).
    private static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }
}
