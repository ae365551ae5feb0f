import LinuxShim
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A region's mapping registered with the process's SIGBUS guard
/// (`qs_regionguard.h`): a page the backing cannot provide (the file was
/// truncated under the mapping, or its filesystem is full) no longer ends
/// the process; the access reads or writes a private zero page instead, and
/// `faults` counts it. The region polls `faults` after every copy out of
/// the mapping (`Region.checkIntact`).
struct BackingGuard: Sendable {
    /// Regions mapped at once per process: the guard's table is a fixed
    /// array, so that a signal handler can search it without a lock.
    static let limit = Int(QS_GUARD_SLOTS)

    private let slot: Int32

    /// Registers `length` bytes at `start` (rounded up to whole pages: the
    /// last page of the mapping faults like the rest).
    init(start: UnsafeMutableRawPointer, length: Int) throws(Region.Failure) {
        let page = Int(getpagesize())
        let rc = qs_guard_register(start, (length + page - 1) / page * page)
        guard rc >= 0 else {
            if rc == -ENOSPC { throw .tooManyRegions(limit: Self.limit) }
            throw .map(errno: Errno(rawValue: -rc))
        }
        slot = rc
    }

    /// Before the mapping goes away.
    func unregister() { qs_guard_unregister(slot) }

    /// SIGBUS faults caught in the mapping so far.
    var faults: UInt64 { qs_guard_faults(slot) }

    /// Where the first caught fault was (0 if none).
    var firstFaultAddress: UInt { UInt(qs_guard_first_fault(slot)) }
}
