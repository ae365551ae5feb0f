import MemReplicaSystem
import LinuxShim
import Foundation
import SystemPackage

/// Catches first touches of a lazy replica's missing pages. The region's
/// mapping is registered with a userfaultfd for MISSING faults; a thread of
/// its own reads fault events and reports the chunk each falls in. A
/// faulting thread sleeps in the kernel until `install` copies the chunk in
/// (UFFDIO_COPY, which also wakes it).
///
/// Only accesses through registered mappings are caught: this process's,
/// and those of attached client processes (`addClient`), each of which
/// registered its own mapping of the whole region with a userfaultfd of its
/// own and passed it here, as CRIU's lazy-pages daemon is handed a
/// restored task's descriptor. A client's fault is served like one of ours:
/// the chunk is installed through our descriptor into our mapping, which
/// for shared memory puts the page into the file's page cache, where the
/// client's mapping finds it once woken (UFFDIO_WAKE on its descriptor);
/// `PostCopyClientTests` checks that reasoning. A process that maps the
/// file without attaching reads zeros from the holes.
///
/// While a lazy replica runs over QUIC, its connection's loop thread reads
/// the fault events instead (`lendToLoop`, `serveOnLoop`), ours and the
/// attached processes', and sends the READ in the same turn: each wake-up
/// of the handler thread and its hand-off to the loop cost tens of µs on a
/// VM, on every fault. The loop watches one descriptor, `faultSet`, an
/// epoll set holding ours and every client's, so clients come and go
/// without the loop's watch changing.
final class MissingFaultHandler: @unchecked Sendable {
    let region: Region
    private let uffd: UserFaultFD
    private let faultSet: Int32
    /// `faultSet`'s token for our own descriptor; clients use their ids (≥ 1).
    private static let ownToken: UInt64 = 0
    private let wakeup: Int32
    private let stopped = DispatchSemaphore(value: 0)
    private let stopping = Locked(false)
    private let clients: Locked<Clients>
    private let onFault: @Sendable (Int, ObjectIdentifier?, Int?) -> Bool
    /// False once `stop` is about to close `uffd` and `faultSet`: the loop
    /// reads and wakes through them only under this lock, so never after
    /// their close.
    private let uffdOpen = Locked(true)

    /// Attached processes' descriptors. The handler thread polls `active`;
    /// a removed client's descriptor is closed by that thread (never while
    /// it may be polled), and `install` and the loop read and wake under
    /// the lock, so no descriptor is used after its close.
    struct Clients {
        struct Client { let id: Int; let uffd: UserFaultFD; let base: UInt; let length: Int }
        var active: [Client] = []
        var retired: [UserFaultFD] = []
        var nextID = 0
        /// The handler thread has ended (`stop`): nothing may be added,
        /// and `wakeup` is about to be closed.
        var closed = false
        /// Bumped on each change, so the thread knows to rebuild its poll set.
        var generation = 0
        /// A loop thread reads the faults (`faultSet`): the handler thread
        /// leaves every descriptor but its wake-up out of its poll set.
        var lentToLoop = false
    }

    /// `onFault` runs with the chunk index of each fault, on the handler
    /// thread (second argument nil) or, while lent, on the loop thread in
    /// `serveOnLoop` (that loop's identity), with the attached client's id
    /// (third argument; nil for our own mapping); it must not block. It
    /// returns false when the chunk turned out to be present already, and
    /// the faulting thread is woken here.
    init(region: Region, onFault: @escaping @Sendable (Int, ObjectIdentifier?, Int?) -> Bool) throws {
        guard region.isSharedMemory else { throw PostCopyError.notSharedMemory(region: region.name) }
        let fd: UserFaultFD
        do {
            fd = try UserFaultFD.open()
        } catch {
            throw PostCopyError.userfaultfd(call: "open", errno: error.syscall)
        }
        do {
            try fd.handshake(requesting: .missingShmem)
        } catch {
            try? fd.close()
            if error == .invalidArgument { throw PostCopyError.missingShmemUnsupported }
            throw PostCopyError.userfaultfd(call: "UFFDIO_API", errno: error)
        }
        do {
            try fd.registerMissing(region.bytes.baseAddress, length: Self.pageAligned(region.geometry.size))
        } catch {
            try? fd.close()
            throw PostCopyError.userfaultfd(call: "UFFDIO_REGISTER", errno: error)
        }
        let set = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard set >= 0 else {
            try? fd.close()
            throw PostCopyError.userfaultfd(call: "epoll_create1", errno: Errno(rawValue: errno))
        }
        guard Self.watch(fd.rawValue, token: Self.ownToken, in: set) else {
            let e = errno
            close(set); try? fd.close()
            throw PostCopyError.userfaultfd(call: "epoll_ctl", errno: Errno(rawValue: e))
        }
        let event = eventfd(0, Int32(EFD_CLOEXEC))
        guard event >= 0 else {
            close(set); try? fd.close()
            throw PostCopyError.userfaultfd(call: "eventfd", errno: Errno(rawValue: errno))
        }
        self.region = region
        uffd = fd
        faultSet = set
        wakeup = event
        let clients = Locked(Clients())
        self.clients = clients
        self.onFault = onFault
        let thread = Thread { [uffd, wakeup, stopped] in
            Self.serve(uffd: uffd, wakeup: wakeup, region: region, clients: clients) { onFault($0, nil, $1) }
            clients.withLock { c in
                for client in c.active { try? client.uffd.close() }
                for fd in c.retired { try? fd.close() }
                c.active = []
                c.retired = []
                c.closed = true
            }
            stopped.signal()
        }
        thread.name = "faults \(region.name)"
        thread.start()
    }

    /// A wake-up value the handler thread reads as "stop"; any smaller
    /// count means "the clients changed".
    private static let stopValue: UInt64 = 1 << 40

    private static func serve(uffd: UserFaultFD, wakeup: Int32, region: Region, clients: Locked<Clients>,
                              onFault: (Int, Int?) -> Bool) {
        let base = UInt(bitPattern: region.bytes.baseAddress)
        let chunkSize = UInt(region.geometry.chunkSize)
        let addresses = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: 64)
        defer { addresses.deallocate() }
        var polled: [Clients.Client] = []
        var generation = -1
        var lent = false
        var dead = Set<Int>()
        while true {
            let now = clients.withLock { c -> [Clients.Client]? in
                for fd in c.retired { try? fd.close() }
                c.retired = []
                guard c.generation != generation else { return nil }
                generation = c.generation
                lent = c.lentToLoop
                return c.active
            }
            if let now { polled = now; dead.formIntersection(now.map(\.id)) }
            // While a loop reads the faults, only the wake-up is polled here.
            let live = lent ? [] : polled.filter { !dead.contains($0.id) }
            // poll skips a negative descriptor: ours, while the loop reads it.
            var fds = [pollfd(fd: lent ? -1 : uffd.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0)]
                + live.map { pollfd(fd: $0.uffd.rawValue, events: Int16(POLLIN), revents: 0) }
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 || errno == EINTR else { return }
            if fds[1].revents != 0 {
                var value: UInt64 = 0
                _ = read(wakeup, &value, 8)
                if value >= stopValue { return }
                continue
            }
            if fds[0].revents & Int16(POLLIN) != 0 {
                guard let n = try? uffd.readFaults(into: addresses) else { return }
                for address in addresses.prefix(n) {
                    let offset = UInt(address) &- base
                    guard offset < UInt(region.geometry.size) else { continue }
                    let chunk = Int(offset / chunkSize)
                    if !onFault(chunk, nil), let range = region.geometry.byteRange(ofChunk: chunk) {
                        try? uffd.wake(region.bytes.baseAddress! + range.lowerBound, length: pageAligned(range.count))
                    }
                }
            }
            for (index, client) in live.enumerated() {
                let events = fds[index + 2].revents
                guard events != 0 else { continue }
                guard events & Int16(POLLIN) != 0 else { dead.insert(client.id); continue }
                // The client's address space went away, or its descriptor broke:
                // stop polling it (the session's end removes it).
                guard let n = try? client.uffd.readFaults(into: addresses) else { dead.insert(client.id); continue }
                for address in addresses.prefix(n) {
                    let offset = UInt(address) &- client.base
                    guard offset < UInt(client.length) else { continue }
                    let chunk = Int(offset / chunkSize)
                    if !onFault(chunk, client.id), let range = region.geometry.byteRange(ofChunk: chunk) {
                        wakeClient(client, range: range)
                    }
                }
            }
        }
    }

    private static func watch(_ fd: Int32, token: UInt64, in set: Int32) -> Bool {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = token
        return epoll_ctl(set, EPOLL_CTL_ADD, fd, &event) == 0
    }

    private static func wakeClient(_ client: Clients.Client, range: Range<Int>) {
        let length = min(pageAligned(range.count), client.length - range.lowerBound)
        // `addClient` took only mappings inside the user address space, so
        // this cannot overflow; checked all the same, as a client's numbers.
        let (address, overflow) = client.base.addingReportingOverflow(UInt(range.lowerBound))
        guard length > 0, !overflow else { return }
        try? client.uffd.wake(UnsafeMutableRawPointer(bitPattern: address), length: length)
    }

    /// Serves the faults of another process's mapping of this region: `uffd`
    /// (now owned here) is that process's userfaultfd, on which it
    /// registered [base, base+length) for MISSING faults, a MAP_SHARED
    /// mapping of the whole backing file from offset 0. Returns the id for
    /// `removeClient`.
    /// Nil (the descriptor untouched) once the handler has stopped, when
    /// epoll will not take the descriptor (e.g. fs.epoll.max_user_watches),
    /// or when the range is not a mapping of the region inside the user
    /// address space (`AttachMapping`; callers check it first).
    func addClient(uffd clientFD: Int32, base: UInt64, length: Int) -> Int? {
        guard (try? AttachMapping(base: base, length: length, regionSize: region.geometry.size)) != nil else { return nil }
        return clients.withLock { c -> Int? in
            // A client the loop could not watch would go unserved while
            // the loop reads the faults: refuse it instead.
            guard !c.closed, Self.watch(clientFD, token: UInt64(c.nextID + 1), in: faultSet) else { return nil }
            c.nextID += 1
            c.active.append(.init(id: c.nextID, uffd: UserFaultFD(rawValue: clientFD), base: UInt(base), length: length))
            c.generation += 1
            var one: UInt64 = 1
            _ = write(wakeup, &one, 8)
            return c.nextID
        }
    }

    /// Stops serving a client and closes its descriptor. What its threads
    /// then see: the process still holds its own descriptor, so its
    /// registration stays and a thread faulting on a missing page keeps
    /// sleeping until the process closes that descriptor (or exits); once
    /// closed, the kernel wakes such threads and they read the hole, zeros.
    /// `AttachedRegion` therefore reports the end of the session rather
    /// than closing its descriptor behind its readers' backs.
    func removeClient(_ id: Int) {
        clients.withLock { c in
            guard !c.closed, let index = c.active.firstIndex(where: { $0.id == id }) else { return }
            let client = c.active.remove(at: index)
            _ = epoll_ctl(faultSet, EPOLL_CTL_DEL, client.uffd.rawValue, nil)
            c.retired.append(client.uffd)
            c.generation += 1
            var one: UInt64 = 1
            _ = write(wakeup, &one, 8)
        }
    }

    var clientCount: Int { clients.withLock { $0.active.count } }

    /// The fault set (ours and the clients' descriptors), for a loop to
    /// watch between `lendToLoop(true)` and `lendToLoop(false)`. Valid
    /// until `stop`, which the loop learns from `serveOnLoop` returning false.
    var descriptor: Int32 { faultSet }

    /// Whether a loop reads the faults (`serveOnLoop`) rather than the
    /// handler thread. Both may read for a moment around a change; each
    /// event goes to one reader (the descriptors do not block).
    func lendToLoop(_ lent: Bool) {
        clients.withLock { c in
            guard !c.closed, c.lentToLoop != lent else { return }
            c.lentToLoop = lent
            c.generation += 1
            var one: UInt64 = 1
            _ = write(wakeup, &one, 8)
        }
    }

    /// On the loop thread that watches `descriptor` (`loop` names it): reads
    /// every pending fault, ours and the attached processes', and hands each
    /// to `onFault`. The loop also calls it once a turn unasked, so with no
    /// client attached it costs one read of our descriptor, as before there
    /// were clients to look for. False once the handler has stopped (stop
    /// watching).
    func serveOnLoop(_ loop: ObjectIdentifier) -> Bool {
        guard serveOwnFaultsOnLoop(loop) else { return false }
        guard clients.withLock({ !$0.active.isEmpty }) else { return true }
        return withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: 8) { ready in
            let count: Int? = uffdOpen.withLock { open in
                open ? Int(epoll_wait(faultSet, ready.baseAddress, Int32(ready.count), 0)) : nil
            }
            guard let count else { return false }
            for event in ready.prefix(max(count, 0)) where event.data.u64 != Self.ownToken {
                serveClientFaultsOnLoop(Int(event.data.u64), events: event.events, loop: loop)
            }
            return true
        }
    }

    private func serveOwnFaultsOnLoop(_ loop: ObjectIdentifier) -> Bool {
        let base = UInt(bitPattern: region.bytes.baseAddress)
        let chunkSize = UInt(region.geometry.chunkSize)
        return withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 64) { addresses in
            while true {
                let n = uffdOpen.withLock { open in
                    open ? (try? uffd.readFaults(into: addresses)) ?? -1 : -1
                }
                guard n > 0 else { return n == 0 }
                for address in addresses.prefix(n) {
                    let offset = UInt(address) &- base
                    guard offset < UInt(region.geometry.size) else { continue }
                    let chunk = Int(offset / chunkSize)
                    if !onFault(chunk, loop, nil), let range = region.geometry.byteRange(ofChunk: chunk) {
                        uffdOpen.withLock { open in
                            guard open else { return }
                            try? uffd.wake(region.bytes.baseAddress! + range.lowerBound, length: Self.pageAligned(range.count))
                        }
                    }
                }
                // Fewer than asked for: nothing more was pending.
                if n < addresses.count { return true }
            }
        }
    }

    /// An attached process's faults. Its descriptor is read under the
    /// clients' lock, since a removed client's is closed after; `onFault`
    /// runs outside it (it takes the mirror's state lock, which `install`
    /// holds while it takes this one).
    private func serveClientFaultsOnLoop(_ id: Int, events: UInt32, loop: ObjectIdentifier) {
        let chunkSize = UInt(region.geometry.chunkSize)
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 64) { addresses in
            while true {
                let read = clients.withLock { c -> (count: Int, base: UInt, length: Int)? in
                    guard let client = c.active.first(where: { $0.id == id }) else { return nil }
                    let n = events & EPOLLIN.rawValue == 0
                        ? -1 : (try? client.uffd.readFaults(into: addresses)) ?? -1
                    // The descriptor broke: stop watching it, or the set would
                    // stay ready and the loop spin (the session's end removes
                    // the client).
                    if n < 0 { _ = epoll_ctl(faultSet, EPOLL_CTL_DEL, client.uffd.rawValue, nil) }
                    return (n, client.base, client.length)
                }
                guard let read, read.count > 0 else { return }
                for address in addresses.prefix(read.count) {
                    let offset = UInt(address) &- read.base
                    guard offset < UInt(read.length) else { continue }
                    let chunk = Int(offset / chunkSize)
                    if !onFault(chunk, loop, id), let range = region.geometry.byteRange(ofChunk: chunk) {
                        clients.withLock { c in
                            if let client = c.active.first(where: { $0.id == id }) { Self.wakeClient(client, range: range) }
                        }
                    }
                }
                if read.count < addresses.count { return }
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
                let (copied, failure) = uffd.copy(to: destination + done, from: source.baseAddress! + done, length: length - done)
                guard let failure else { break }
                done += copied
                switch failure {
                case .fileExists: done += page              // present already: skip that page
                case .resourceTemporarilyUnavailable: continue  // the mapping changed under us: retry the rest
                default: throw PostCopyError.userfaultfd(call: "UFFDIO_COPY", errno: failure)
                }
            }
        }
        // A thread that faulted on a page that turned out present still sleeps.
        try? uffd.wake(destination, length: length)
        // Attached processes find the page in the page cache once woken.
        clients.withLock { c in
            for client in c.active { Self.wakeClient(client, range: range) }
        }
    }

    private static func pageAligned(_ length: Int) -> Int {
        let page = Int(getpagesize())
        return (length + page - 1) / page * page
    }

    /// Stops the handler thread and retires the mapping (once; later calls
    /// do nothing). A thread of this process still asleep in a fault must
    /// not wake onto the file: its read of a hole would put a page of zeros
    /// into the region's file (shared memory allocates on a read fault),
    /// bytes the primary never wrote. So the mapping is first replaced in
    /// place by private, read-only zero pages; closing the descriptor then
    /// wakes such threads onto those. The region's mapping is unusable after
    /// (`PostCopyMirror` reports it stopped); the file is untouched.
    func stop() {
        guard !stopping.withLock({ was in defer { was = true }; return was }) else { return }
        var stop = Self.stopValue
        _ = write(wakeup, &stop, 8)
        stopped.wait()
        uffdOpen.withLock { $0 = false }
        let length = Self.pageAligned(region.geometry.size)
        let zeros = mmap(region.bytes.baseAddress, length, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0)
        if zeros == MAP_FAILED {
            // Out of address-space bookkeeping: leave the registration, so a
            // sleeping thread sleeps on rather than reads a hole.
            close(faultSet)
            close(wakeup)
            return
        }
        close(faultSet)
        try? uffd.close()
        close(wakeup)
    }
}
