import LinuxShim
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension Region {
    /// How a file-backed region takes its blocks from the filesystem. A
    /// sparse file's hole gets its block when a page is first written (on
    /// tmpfs, even first read); on a full filesystem that fails as SIGBUS
    /// in whoever touched the page. So blocks are taken at start.
    public enum Allocation: Sendable, Equatable {
        /// Every block reserved (fallocate(2)) each time the region is
        /// opened: a full filesystem fails here with `Failure.noSpace`.
        /// Where the filesystem cannot fallocate, the free space is checked
        /// as for `sparse`.
        case reserved
        /// Left sparse: a lazy replica's holes are how userfaultfd tells it
        /// which pages are missing, so they must stay holes. The filesystem's
        /// free space must cover the bytes not allocated yet; that is
        /// checked here once, not reserved (something else may take it).
        case sparse
    }

    /// Grows the file to `length` bytes (from `current`) and takes its
    /// blocks as `allocation` says.
    static func allocate(_ fd: FileDescriptor, path: String, length: Int, current: Int,
                         as allocation: Allocation) throws(Failure) {
        if allocation == .reserved {
            let rc = qs_fallocate(fd.rawValue, 0, Int64(length))
            if rc == 0 { return }
            if rc == -ENOSPC {
                // Blocks taken before the failure are given back first, so
                // the free space reported is what there is.
                if current < length { _ = ftruncate(fd.rawValue, off_t(current)) }
                throw .noSpace(path: path, size: length, free: freeBytes(fd) ?? 0)
            }
            // Filesystems without fallocate get the free-space check below.
            guard rc == -EOPNOTSUPP || rc == -ENOSYS else { throw .allocate(path: path, errno: Errno(rawValue: -rc)) }
        }
        var st = stat()
        let allocated = fstat(fd.rawValue, &st) == 0 ? Int(st.st_blocks) * 512 : 0
        if let free = freeBytes(fd), length - allocated > free {
            throw .noSpace(path: path, size: length, free: free)
        }
        if current < length, ftruncate(fd.rawValue, off_t(length)) != 0 {
            throw .allocate(path: path, errno: Errno(rawValue: errno))
        }
    }

    /// Bytes an unprivileged writer can still allocate on `fd`'s filesystem.
    private static func freeBytes(_ fd: FileDescriptor) -> Int? {
        var fs = statvfs()
        guard fstatvfs(fd.rawValue, &fs) == 0 else { return nil }
        return Int(fs.f_bavail) * Int(fs.f_frsize)
    }
}
