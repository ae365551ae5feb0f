import Foundation
import QuicShim
import SystemPackage

/// Catches first touches of a lazy replica's missing pages. The region's
/// mapping is registered with a userfaultfd for MISSING faults; a thread of
/// its own reads fault events and reports the chunk each falls in. A
/// faulting thread sleeps in the kernel until `install` copies the chunk in
/// (UFFDIO_COPY, which also wakes it).
///
/// Only accesses through this process's mapping are caught. Another process
/// mapping the same file would read zeros from a hole: lazy replicas keep
/// their regions to themselves until complete.
final class MissingFaultHandler: @unchecked Sendable {
    let region: Region
    private let uffd: Int32
    private let wakeup: Int32
    private let stopped = DispatchSemaphore(value: 0)
    private let stopping = Locked(false)

    /// `onFault` runs on the handler thread with the chunk index of each
    /// fault; it must not block. It returns false when the chunk turned out
    /// to be present already, and the faulting thread is woken here.
    init(region: Region, onFault: @escaping @Sendable (Int) -> Bool) throws {
        guard region.isSharedMemory else { throw PostCopyError.notSharedMemory(region: region.name) }
        let fd = qs_uffd_open(0)
        guard fd >= 0 else { throw PostCopyError.userfaultfd(call: "open", errno: Errno(rawValue: -fd)) }
        var available: UInt64 = 0
        var rc = qs_uffd_api(fd, qs_uffd_feature_missing_shmem(), &available)
        guard rc == 0 else {
            close(fd)
            if rc == -EINVAL { throw PostCopyError.missingShmemUnsupported }
            throw PostCopyError.userfaultfd(call: "UFFDIO_API", errno: Errno(rawValue: -rc))
        }
        rc = qs_uffd_register_missing(fd, region.bytes.baseAddress, Self.pageAligned(region.geometry.size))
        guard rc == 0 else {
            close(fd)
            throw PostCopyError.userfaultfd(call: "UFFDIO_REGISTER", errno: Errno(rawValue: -rc))
        }
        let event = eventfd(0, Int32(EFD_CLOEXEC))
        guard event >= 0 else {
            close(fd)
            throw PostCopyError.userfaultfd(call: "eventfd", errno: Errno(rawValue: errno))
        }
        self.region = region
        uffd = fd
        wakeup = event
        let thread = Thread { [uffd, wakeup, stopped] in
            Self.serve(uffd: uffd, wakeup: wakeup, region: region, onFault: onFault)
            stopped.signal()
        }
        thread.name = "faults \(region.name)"
        thread.start()
    }

    private static func serve(uffd: Int32, wakeup: Int32, region: Region, onFault: (Int) -> Bool) {
        let base = UInt(bitPattern: region.bytes.baseAddress)
        let chunkSize = UInt(region.geometry.chunkSize)
        var fds = [pollfd(fd: uffd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)]
        var addresses = [UInt64](repeating: 0, count: 64)
        while true {
            guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { return }
            if fds[1].revents != 0 { return }
            guard fds[0].revents & Int16(POLLIN) != 0 else { continue }
            let n = qs_uffd_read_faults(uffd, &addresses, Int32(addresses.count))
            guard n >= 0 else { return }
            for address in addresses.prefix(Int(n)) {
                let offset = UInt(address) &- base
                guard offset < UInt(region.geometry.size) else { continue }
                let chunk = Int(offset / chunkSize)
                if !onFault(chunk), let range = region.geometry.byteRange(ofChunk: chunk) {
                    _ = qs_uffd_wake(uffd, region.bytes.baseAddress! + range.lowerBound, pageAligned(range.count))
                }
            }
        }
    }

    /// Copies a chunk's bytes into the missing pages and wakes whoever
    /// faulted there. Pages already present are left as they are.
    func install(chunk: Int, bytes: UnsafeRawBufferPointer) throws {
        guard let range = region.geometry.byteRange(ofChunk: chunk), bytes.count == range.count else {
            throw Region.Failure.wrongChunkLength(index: chunk, expected: region.geometry.byteRange(ofChunk: chunk)?.count ?? 0,
                                                  got: bytes.count)
        }
        let page = Int(getpagesize())
        // The last chunk may end mid-page: UFFDIO_COPY works in whole pages.
        let length = Self.pageAligned(range.count)
        let source: UnsafeRawBufferPointer
        var padded: [UInt8] = []
        if length == range.count {
            source = bytes
        } else {
            padded = Array(bytes) + [UInt8](repeating: 0, count: length - range.count)
            source = padded.withUnsafeBytes { $0 }
        }
        let destination = region.bytes.baseAddress! + range.lowerBound
        var done = 0
        try withExtendedLifetime(padded) {
            while done < length {
                var copied: Int64 = 0
                let rc = qs_uffd_copy(uffd, destination + done, source.baseAddress! + done, length - done, &copied)
                if rc == 0 { break }
                if copied > 0 { done += Int(copied) }
                switch -rc {
                case EEXIST: done += page  // present already: skip that page
                case EAGAIN: continue      // the mapping changed under us: retry the rest
                default: throw PostCopyError.userfaultfd(call: "UFFDIO_COPY", errno: Errno(rawValue: -rc))
                }
            }
        }
        // A thread that faulted on a page that turned out present still sleeps.
        _ = qs_uffd_wake(uffd, destination, length)
    }

    private static func pageAligned(_ length: Int) -> Int {
        let page = Int(getpagesize())
        return (length + page - 1) / page * page
    }

    /// Stops the handler thread and unregisters the mapping (once; later
    /// calls do nothing). Threads still waiting in a fault are woken and
    /// then read the file as it is: zeros where nothing was installed.
    func stop() {
        guard !stopping.withLock({ was in defer { was = true }; return was }) else { return }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
        stopped.wait()
        _ = qs_uffd_unregister(uffd, region.bytes.baseAddress, Self.pageAligned(region.geometry.size))
        close(uffd)
        close(wakeup)
    }
}
