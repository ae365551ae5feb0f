import Foundation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Small state files replaced atomically and durably: write a temporary file
/// beside the target, fsync it, rename it over the target, fsync the folder.
/// A crash leaves either the old content or the new, never a torn file.
package enum AtomicFile {
    struct Failure: Error, CustomStringConvertible {
        let path: String
        let step: String
        let errno: Errno
        var description: String { "cannot write \(path) (\(step)): \(errno)" }
    }

    package static func write(_ bytes: [UInt8], to path: String, permissions: FilePermissions = [.ownerReadWrite]) throws {
        let temporary = path + ".tmp-\(getpid())"
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(temporary), .writeOnly, options: [.create, .truncate, .closeOnExec],
                                         permissions: permissions)
        } catch let e as Errno {
            throw Failure(path: path, step: "open", errno: e)
        }
        do {
            _ = try fd.writeAll(bytes)
            guard fsync(fd.rawValue) == 0 else { throw Failure(path: path, step: "fsync", errno: Errno(rawValue: errno)) }
            try fd.close()
        } catch {
            try? fd.close()
            unlink(temporary)
            if let e = error as? Errno { throw Failure(path: path, step: "write", errno: e) }
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let e = Errno(rawValue: errno)
            unlink(temporary)
            throw Failure(path: path, step: "rename", errno: e)
        }
        let folder = (path as NSString).deletingLastPathComponent
        if let dir = try? FileDescriptor.open(FilePath(folder.isEmpty ? "." : folder), .readOnly, options: [.directory, .closeOnExec]) {
            _ = fsync(dir.rawValue)
            try? dir.close()
        }
    }

    /// The file's bytes, or nil when it does not exist.
    package static func read(_ path: String, limit: Int = 1 << 20) throws -> [UInt8]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(path: path, step: "read", errno: .ioError)
        }
        guard data.count <= limit else { throw Failure(path: path, step: "read (file too large)", errno: .fileTooLarge) }
        return Array(data)
    }

    /// A file name for `name` that is safe in one folder: letters, digits,
    /// '-', '_' kept; every other byte (and a leading '.') as %XX.
    package static func safeName(_ name: String) -> String {
        var out = ""
        for (i, b) in name.utf8.enumerated() {
            let c = Character(Unicode.Scalar(b))
            if (c.isASCII && (c.isLetter || c.isNumber)) || c == "-" || c == "_" || (c == "." && i > 0) {
                out.append(c)
            } else {
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }
}
