import LinuxShim
import MemReplicaSystem
import Foundation
import SystemPackage

/// The floor under a post-copy fault (`bench faults`), measured in the
/// same run: a shared-memory mapping like a lazy replica's, registered for
/// MISSING faults on a userfaultfd; a handler thread that reads each fault,
/// asks the floor peer (a second process, `PageServerProcess`) for the
/// 4 KiB over loopback UDP and installs it with UFFDIO_COPY. No crypto, no
/// QUIC, no frames, one thread each side: what a fault cannot go below.
enum BareFaultFloor {
    /// Touches `pages` (4 KiB page indexes of `primary`) in order on a
    /// thread of its own, each a fault resolved as above; returns each
    /// touch's time in ns. Checks every word read against `primary`.
    static func measure(primary: UnsafeRawBufferPointer, pages: [Int], server: PageServerProcess) async throws -> [UInt64] {
        let page = Int(getpagesize())
        let length = (primary.count + page - 1) / page * page
        let memfd = qs_memfd_create("memreplica-bench-floor")
        guard memfd >= 0 else { throw Errno(rawValue: -memfd) }
        defer { close(memfd) }
        guard ftruncate(memfd, off_t(length)) == 0 else { throw Errno(rawValue: errno) }
        guard let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0), base != MAP_FAILED else {
            throw Errno(rawValue: errno)
        }
        defer { munmap(base, length) }
        let uffd: UserFaultFD
        do {
            uffd = try UserFaultFD.open()
        } catch {
            throw error.syscall
        }
        defer { try? uffd.close() }
        _ = try uffd.handshake(requesting: .missingShmem)
        try uffd.registerMissing(base, length: length)
        let stop = eventfd(0, Int32(EFD_CLOEXEC))
        guard stop >= 0 else { throw Errno(rawValue: errno) }
        defer { close(stop) }
        let client = try PageServerProcess.Client(server, .udp)

        // Addresses cross into the threads; the mapping outlives both.
        let baseAddress = UInt(bitPattern: base)
        let handlerDone = DispatchSemaphore(value: 0)
        let handlerError = Locked<Errno?>(nil)
        let handler = Thread {
            defer { handlerDone.signal() }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: page, alignment: page)
            defer { buffer.deallocate() }
            let addresses = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
            defer { addresses.deallocate() }
            var fds = [pollfd(fd: uffd.rawValue, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            do {
                while true {
                    guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { throw Errno(rawValue: errno) }
                    if fds[1].revents != 0 { return }
                    let n = try uffd.readFaults(into: addresses)
                    for address in addresses.prefix(n) {
                        let pageStart = UInt(address) & ~UInt(page - 1)
                        try client.fetch(offset: Int(pageStart - baseAddress), into: buffer)
                        let (_, error) = uffd.copy(to: UnsafeMutableRawPointer(bitPattern: pageStart)!,
                                                   from: UnsafeRawPointer(buffer.baseAddress!), length: page)
                        if let error, error != .fileExists { throw error }
                    }
                }
            } catch {
                handlerError.withLock { $0 = error as? Errno ?? .ioError }
                // A toucher waits in the kernel: wake it on zeros to end the run.
                try? uffd.wake(UnsafeMutableRawPointer(bitPattern: baseAddress), length: length)
            }
        }
        handler.name = "bench floor handler"
        handler.start()
        defer {
            var one: UInt64 = 1
            _ = write(stop, &one, 8)
            handlerDone.wait()
        }
        return try await timeFirstTouches(of: UnsafeRawBufferPointer(start: base, count: length), against: primary,
                                          pages: pages) { _ in handlerError.withLock { $0 } ?? Errno.badMessage }
    }
}
