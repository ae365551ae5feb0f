/// What the forwarder did in one direction since the emulator started.
public struct WANDirectionStatistics: Sendable, Equatable, Codable {
    /// Packets the forwarder read from the sending side's TUN device.
    public var packetsReceived: UInt64 = 0
    /// Packets delivered to the receiving side, and their bytes (IP headers included).
    public var packetsPassed: UInt64 = 0
    public var bytesPassed: UInt64 = 0
    /// Dropped by the random loss.
    public var droppedByLoss: UInt64 = 0
    /// Tail-dropped: the rate limiter's queue was full.
    public var droppedByQueue: UInt64 = 0
    /// Dropped because all the forwarder's packet buffers were holding
    /// delayed packets (delay × rate beyond what it was sized for).
    public var droppedByCapacity: UInt64 = 0
    /// Writes into the receiving TUN device that failed.
    public var writeErrors: UInt64 = 0
    /// Packets the rate limiter accepted, and the time they waited behind
    /// earlier packets before their own transmission began, summed: the
    /// bottleneck's queueing delay (what a sender's excess costs everyone).
    public var packetsQueued: UInt64 = 0
    public var queueWaitNanoseconds: UInt64 = 0
    /// Packets held (delayed or queued) at the moment of the snapshot.
    public var packetsInFlight: Int = 0
    /// The sending side's TUN device: packets its kernel dropped because the
    /// forwarder did not read them fast enough (tx_dropped). Nil if it
    /// could not be read.
    public var kernelTxDropped: UInt64?

    public init() {}

    /// Mean wait in the bottleneck's queue per packet; nil without a rate
    /// limit or packets.
    public var meanQueueWaitMilliseconds: Double? {
        packetsQueued > 0 ? Double(queueWaitNanoseconds) / Double(packetsQueued) / 1e6 : nil
    }

    /// The counts since `earlier` (in-flight is this snapshot's).
    public func since(_ earlier: WANDirectionStatistics) -> WANDirectionStatistics {
        var d = self
        d.packetsReceived -= min(earlier.packetsReceived, packetsReceived)
        d.packetsPassed -= min(earlier.packetsPassed, packetsPassed)
        d.bytesPassed -= min(earlier.bytesPassed, bytesPassed)
        d.droppedByLoss -= min(earlier.droppedByLoss, droppedByLoss)
        d.droppedByQueue -= min(earlier.droppedByQueue, droppedByQueue)
        d.droppedByCapacity -= min(earlier.droppedByCapacity, droppedByCapacity)
        d.writeErrors -= min(earlier.writeErrors, writeErrors)
        d.packetsQueued -= min(earlier.packetsQueued, packetsQueued)
        d.queueWaitNanoseconds -= min(earlier.queueWaitNanoseconds, queueWaitNanoseconds)
        if let now = kernelTxDropped, let then = earlier.kernelTxDropped { d.kernelTxDropped = now - min(then, now) }
        return d
    }
}
