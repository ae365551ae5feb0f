import LinuxShim
import SystemPackage

/// A userfaultfd: the one wrapper of LinuxShim's `qs_uffd_*` calls, for the
/// post-copy fault handler (MISSING faults, UFFDIO_COPY and WAKE) and the
/// exact dirty tracker (WP_ASYNC write-protection, read with
/// `PagemapScan`). Like `FileDescriptor`, a value naming the descriptor:
/// it owns nothing, and `close()` ends it.
///
/// Every call that fails throws the kernel's errno, typed, so the fault
/// path (`readFaults`, `copy`, `wake`) allocates nothing, failing or not.
package struct UserFaultFD: RawRepresentable, Hashable, Sendable {
    package let rawValue: Int32

    package init(rawValue: Int32) { self.rawValue = rawValue }

    /// Why no userfaultfd could be opened: /dev/userfaultfd's error (tried
    /// first), then the userfaultfd(2) syscall's.
    package struct OpenFailure: Error, Sendable, Equatable {
        package let device: Errno
        package let syscall: Errno
    }

    /// A new non-blocking, close-on-exec userfaultfd that also handles
    /// kernel-mode faults: from /dev/userfaultfd, else the syscall
    /// (`qs_uffd_open_ex` says why in that order).
    package static func open() throws(OpenFailure) -> UserFaultFD {
        var device: Int32 = 0
        let fd = qs_uffd_open_ex(0, &device)
        guard fd >= 0 else { throw OpenFailure(device: Errno(rawValue: -device), syscall: Errno(rawValue: -fd)) }
        return UserFaultFD(rawValue: fd)
    }

    /// Feature bits of `handshake`.
    package struct Features: OptionSet, Sendable {
        package let rawValue: UInt64
        package init(rawValue: UInt64) { self.rawValue = rawValue }

        package static let missingShmem = Features(rawValue: QS_UFFD_FEATURE_MISSING_SHMEM)
        package static let writeProtectHugetlbfsShmem = Features(rawValue: QS_UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
        package static let writeProtectUnpopulated = Features(rawValue: QS_UFFD_FEATURE_WP_UNPOPULATED)
        package static let writeProtectAsync = Features(rawValue: QS_UFFD_FEATURE_WP_ASYNC)
    }

    /// The UFFDIO_API handshake asking for `features` (allowed once per
    /// descriptor; EINVAL when the kernel lacks one). Returns every feature
    /// the kernel offers.
    @discardableResult
    package func handshake(requesting features: Features) throws(Errno) -> Features {
        var available: UInt64 = 0
        try Self.check(qs_uffd_api(rawValue, features.rawValue, &available))
        return Features(rawValue: available)
    }

    /// What a registration catches.
    package enum Mode: Sendable {
        /// Faults on pages not present (post-copy).
        case missing
        /// Writes to write-protected pages (dirty tracking).
        case writeProtect

        var bits: UInt64 {
            switch self {
            case .missing: QS_UFFDIO_REGISTER_MODE_MISSING
            case .writeProtect: QS_UFFDIO_REGISTER_MODE_WP
            }
        }
    }

    /// The ioctls a registered range allows.
    package struct Ioctls: OptionSet, Sendable {
        package let rawValue: UInt64
        package init(rawValue: UInt64) { self.rawValue = rawValue }

        package static let copy = Ioctls(rawValue: QS_UFFDIO_COPY_ALLOWED)
        package static let wake = Ioctls(rawValue: QS_UFFDIO_WAKE_ALLOWED)
        package static let writeProtect = Ioctls(rawValue: QS_UFFDIO_WRITEPROTECT_ALLOWED)
    }

    /// UFFDIO_REGISTER of `length` bytes at `start` (page aligned). EBUSY
    /// when another userfaultfd registered the range already.
    @discardableResult
    package func register(_ mode: Mode, _ start: UnsafeMutableRawPointer?, length: Int) throws(Errno) -> Ioctls {
        var ioctls: UInt64 = 0
        try Self.check(qs_uffd_register(rawValue, start, length, mode.bits, &ioctls))
        return Ioctls(rawValue: ioctls)
    }

    /// `register(.missing, ...)`; ENOTSUP when the range does not allow
    /// UFFDIO_COPY (as `qs_uffd_register_missing`).
    package func registerMissing(_ start: UnsafeMutableRawPointer?, length: Int) throws(Errno) {
        try Self.check(qs_uffd_register_missing(rawValue, start, length))
    }

    package func unregister(_ start: UnsafeMutableRawPointer?, length: Int) throws(Errno) {
        try Self.check(qs_uffd_unregister(rawValue, start, length))
    }

    /// UFFDIO_COPY of `length` bytes from `source` into missing pages at
    /// `destination`, waking the threads faulting there. Returns how many
    /// bytes went in and the error that stopped it, if any (EEXIST: a page
    /// was present already; EAGAIN: the mapping changed, retry the rest).
    package func copy(to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer,
                      length: Int) -> (copied: Int, error: Errno?) {
        var copied: Int64 = 0
        let rc = qs_uffd_copy(rawValue, destination, source, length, &copied)
        return (Int(max(copied, 0)), rc == 0 ? nil : Errno(rawValue: -rc))
    }

    /// UFFDIO_WAKE: wakes the threads faulting in the range without
    /// installing anything.
    package func wake(_ start: UnsafeMutableRawPointer?, length: Int) throws(Errno) {
        try Self.check(qs_uffd_wake(rawValue, start, length))
    }

    /// UFFDIO_WRITEPROTECT of a range registered in `.writeProtect` mode:
    /// protects it, or lifts the protection.
    package func writeProtect(_ start: UnsafeMutableRawPointer?, length: Int, _ protect: Bool = true) throws(Errno) {
        try Self.check(qs_uffd_writeprotect(rawValue, start, length, protect ? 1 : 0))
    }

    /// Reads the pending fault events into `addresses`, returning how many
    /// page-fault addresses it wrote (at most 64 per call; fewer than the
    /// buffer holds means none are left); 0 when none are pending.
    package func readFaults(into addresses: UnsafeMutableBufferPointer<UInt64>) throws(Errno) -> Int {
        let n = qs_uffd_read_faults(rawValue, addresses.baseAddress, Int32(clamping: addresses.count))
        try Self.check(n)
        return Int(n)
    }

    package func close() throws(Errno) {
        do {
            try FileDescriptor(rawValue: rawValue).close()
        } catch {
            throw error as? Errno ?? .ioError
        }
    }

    private static func check(_ rc: Int32) throws(Errno) {
        if rc < 0 { throw Errno(rawValue: -rc) }
    }
}
