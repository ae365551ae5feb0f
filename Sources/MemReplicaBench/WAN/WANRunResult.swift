/// What one run of one transport in one scenario measured.
public struct WANRunResult: Codable, Sendable {
    public var scenario: WANScenario
    public var transport: String
    public var run: Int

    /// Connect and mutual-TLS handshake (for TCP also the mux SETTINGS answer).
    public var connectMilliseconds: Double
    /// The second connect of the run, after the first closed: resumed with a
    /// session ticket by both transports.
    public var reconnectMilliseconds: Double

    /// Random one-chunk READs of the read region, each timed from sending
    /// READ to holding the whole DATA, while the bulk sync ran.
    public var readSamples: Int
    public var readP50Milliseconds: Double
    public var readP99Milliseconds: Double
    public var readP999Milliseconds: Double
    public var readMaxMilliseconds: Double

    /// Bulk initial sync of `scenario.regions` regions, from SUBSCRIBE until
    /// all were synced or the time limit.
    public var bulkBytesSynced: Int
    public var bulkBytesTotal: Int
    public var bulkSeconds: Double
    public var bulkCompleted: Bool
    public var throughputMbps: Double
    /// WRITE and PAGES frame bytes the bulk regions' streams sent, per byte
    /// of region they sent (1.0: every chunk whole; below: the saving).
    public var bulkWireBytes: UInt64? = nil
    public var wireBytesPerRegionByte: Double? = nil
    /// Compressed over raw page bytes of what was compressed, and the share
    /// of the region bytes sent that went through the compressor (nil:
    /// nothing was compressed).
    public var compressionRatio: Double? = nil
    public var compressedShare: Double? = nil

    /// Mean time a packet waited in the emulated bottleneck's queue during
    /// the bulk phase, primary → replica (the bulk, and the reads' answers)
    /// and replica → primary (ACKs and READs): the network's share of the
    /// read latency above the RTT. Nil without a rate limit.
    public var bulkQueueWaitMilliseconds: Double? = nil
    public var readQueueWaitMilliseconds: Double? = nil

    /// Write in the primary → the replica's mapping holds it (one way plus
    /// the dirty scan interval; ARCHITECTURE's "write → replica ACK").
    /// Nil when the lag region's initial sync did not finish in time.
    public var lagSamples: Int
    public var lagP50Milliseconds: Double?
    public var lagP99Milliseconds: Double?

    /// A synced region of `--burst-size` bytes rewritten at once (new bytes
    /// copied in from aside): from the copy until the replica equals it. Its
    /// later passes go over lanes when large. Nil when not asked for, or
    /// when the region's initial sync did not finish in time.
    public var burstMilliseconds: Double? = nil
    public var burstMbps: Double? = nil

    /// What the emulator did during the run (both directions together).
    public var packetsPassed: UInt64
    public var packetsDroppedByLoss: UInt64
    /// Tail-dropped by the rate limiter (or for want of forwarder buffers).
    public var packetsDroppedByQueue: UInt64
    public var kernelTxDropped: UInt64
}

/// Percentile of sorted values (nearest rank); 0 for none.
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.down)))]
}
