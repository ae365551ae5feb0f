#if canImport(Glibc)
import MemReplicaSystem
import MemReplicaTransportCore
import Glibc
#endif

/// One direction of the forwarder: packets read from the sending side's TUN
/// device go through loss, the rate limiter's tail-drop queue and the delay
/// line, then are written to the receiving side's device when due. Packet
/// buffers are allocated once; nothing here allocates per packet. Owned by
/// the forwarder thread.
final class WANDirection {
    /// A TUN device with offloads off never hands over more than its MTU
    /// (1500); the slot has room to spare so a larger read is not cut short.
    static let slotSize = 2048
    /// 16 Ki slots (32 MiB of address space, touched only as used) hold
    /// 24 MB in flight: 1 Gbit/s for 190 ms.
    static let slotCount = 16 << 10

    let input: Int32
    let output: Int32
    private let buffers: UnsafeMutableRawPointer
    private let lengths: UnsafeMutablePointer<Int32>
    private let freeSlots: UnsafeMutablePointer<Int32>
    private var freeCount: Int
    private var queue: WANReleaseQueue
    private var sequence: UInt64 = 0
    private var random: WANRandom

    private var delay: UInt64 = 0
    private var jitter: UInt64 = 0
    private var reorder = true
    /// Drop when a draw is below this (lossRate × 2⁶⁴); `dropAll` for 1.
    private var lossThreshold: UInt64 = 0
    private var dropAll = false
    private var rate: Double?
    private var queueLimit: Double = 0
    /// When the bottleneck finishes sending what it has accepted so far:
    /// a virtual FIFO queue whose backlog is (linkFree - now) × rate.
    private var linkFree: UInt64 = 0
    /// Latest release time given out, for in-order jitter.
    private var lastRelease: UInt64 = 0

    private(set) var statistics = WANDirectionStatistics()

    init(input: Int32, output: Int32, profile: WANLinkProfile, seed: UInt64) {
        self.input = input
        self.output = output
        buffers = .allocate(byteCount: Self.slotSize * (Self.slotCount + 1), alignment: 64)
        lengths = .allocate(capacity: Self.slotCount + 1)
        freeSlots = .allocate(capacity: Self.slotCount)
        for i in 0..<Self.slotCount { freeSlots[i] = Int32(Self.slotCount - 1 - i) }
        freeCount = Self.slotCount
        queue = WANReleaseQueue(capacity: Self.slotCount)
        random = WANRandom(seed: seed)
        apply(profile)
    }

    deinit {
        buffers.deallocate()
        lengths.deallocate()
        freeSlots.deallocate()
    }

    /// Takes effect for packets read from now on; those already delayed keep their times.
    func apply(_ profile: WANLinkProfile) {
        delay = profile.delay.saturatingNanoseconds
        jitter = profile.jitter.saturatingNanoseconds
        reorder = profile.reorder
        dropAll = profile.lossRate >= 1
        lossThreshold = profile.lossRate <= 0 || dropAll ? 0 : UInt64(profile.lossRate * 0x1p64)
        rate = profile.rateBitsPerSecond.map { Double($0) }
        queueLimit = Double(profile.queueLimitBytes)
    }

    /// When the next delayed packet is due (CLOCK_MONOTONIC ns), if any.
    var nextRelease: UInt64? { queue.first?.release }

    /// Reads up to `limit` packets; false if the device had no more.
    func readAvailable(limit: Int) -> Bool {
        for _ in 0..<limit {
            // With every slot busy the packet is read into the spare slot
            // past the end and dropped, rather than left to the kernel.
            let slot = freeCount > 0 ? freeSlots[freeCount - 1] : Int32(Self.slotCount)
            let n = read(input, buffers + Int(slot) * Self.slotSize, Self.slotSize)
            if n <= 0 { return false }
            accept(slot: slot, length: n, now: monotonicNanoseconds())
        }
        return true
    }

    private func accept(slot: Int32, length: Int, now: UInt64) {
        statistics.packetsReceived += 1
        guard Int(slot) < Self.slotCount else {
            statistics.droppedByCapacity += 1
            return
        }
        if dropAll || (lossThreshold > 0 && random.next() < lossThreshold) {
            statistics.droppedByLoss += 1
            return
        }
        var departure = now
        if let rate {
            let backlog = linkFree > now ? Double(linkFree - now) * rate / 8e9 : 0
            if backlog + Double(length) > queueLimit {
                statistics.droppedByQueue += 1
                return
            }
            statistics.packetsQueued += 1
            statistics.queueWaitNanoseconds += linkFree > now ? linkFree - now : 0
            linkFree = max(linkFree, now) + UInt64(Double(length) * 8e9 / rate)
            departure = linkFree
        }
        var release = departure + delay
        if jitter > 0 {
            // Uniform over [delay - jitter, delay + jitter], not before departure.
            let offset = random.next() % (2 * jitter + 1)
            release = offset >= jitter ? release + (offset - jitter) : max(departure, release - (jitter - offset))
        }
        if !reorder {
            release = max(release, lastRelease)
            lastRelease = release
        }
        freeCount -= 1
        lengths[Int(slot)] = Int32(length)
        sequence += 1
        queue.push(.init(release: release, sequence: sequence, slot: slot))
    }

    /// Writes every packet due by `now` to the receiving device.
    func releaseDue(now: UInt64) {
        while let first = queue.first, first.release <= now {
            _ = queue.popFirst()
            let slot = Int(first.slot)
            let length = Int(lengths[slot])
            if write(output, buffers + slot * Self.slotSize, length) == length {
                statistics.packetsPassed += 1
                statistics.bytesPassed += UInt64(length)
            } else {
                statistics.writeErrors += 1
            }
            freeSlots[freeCount] = first.slot
            freeCount += 1
        }
        statistics.packetsInFlight = queue.count
    }
}
