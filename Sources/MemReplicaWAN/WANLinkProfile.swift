import MemReplicaTransportCore

/// What one direction of the emulated link does to each packet, in the
/// order the forwarder applies it: random loss, then the rate limiter's
/// tail-drop queue, then the propagation delay with its jitter.
public struct WANLinkProfile: Sendable, Equatable, Codable, CustomStringConvertible {
    /// One-way propagation delay.
    public var delay: Duration
    /// Each packet's delay is drawn uniformly from [delay - jitter, delay +
    /// jitter] (as netem does without a distribution table), never below 0.
    public var jitter: Duration
    /// True: each packet leaves at its own drawn time, so jitter reorders
    /// (netem's behaviour). False: never before the packet ahead of it, so
    /// order is kept and late packets hold back the ones behind them.
    public var reorder: Bool
    /// Probability (0...1) that a packet is dropped, independently of all others.
    public var lossRate: Double
    /// Bottleneck rate in bits per second (IP packets, headers included); nil: unlimited.
    public var rateBitsPerSecond: UInt64?
    /// Bytes that may wait for the bottleneck; a packet that would exceed it
    /// is dropped (tail drop). Unused without a rate.
    public var queueLimitBytes: Int

    public init(delay: Duration = .zero, jitter: Duration = .zero, reorder: Bool = true, lossRate: Double = 0,
                rateBitsPerSecond: UInt64? = nil, queueLimitBytes: Int = 4 << 20) {
        self.delay = delay
        self.jitter = jitter
        self.reorder = reorder
        self.lossRate = lossRate
        self.rateBitsPerSecond = rateBitsPerSecond
        self.queueLimitBytes = queueLimitBytes
    }

    /// The same profile both ways: half the round trip each way, `lossRate`
    /// in each direction (so a round trip loses 1 - (1 - lossRate)² of its
    /// packet pairs), and `jitter` on each one-way delay.
    public static func symmetric(rtt: Duration, lossRate: Double = 0, jitter: Duration = .zero, reorder: Bool = true,
                                 rateBitsPerSecond: UInt64? = nil, queueLimitBytes: Int = 4 << 20)
        -> (forward: WANLinkProfile, reverse: WANLinkProfile) {
        let one = WANLinkProfile(delay: rtt / 2, jitter: jitter, reorder: reorder, lossRate: lossRate,
                                 rateBitsPerSecond: rateBitsPerSecond, queueLimitBytes: queueLimitBytes)
        return (one, one)
    }

    /// Throws `WANEmulatorError.invalidProfile` for values the forwarder cannot apply.
    public func validate() throws {
        if delay < .zero { throw WANEmulatorError.invalidProfile("negative delay \(delay)") }
        if jitter < .zero { throw WANEmulatorError.invalidProfile("negative jitter \(jitter)") }
        if !(0...1).contains(lossRate) { throw WANEmulatorError.invalidProfile("loss rate \(lossRate) outside 0...1") }
        if rateBitsPerSecond == 0 { throw WANEmulatorError.invalidProfile("a rate of 0 bit/s passes nothing") }
        if queueLimitBytes < 1500 {
            throw WANEmulatorError.invalidProfile("queue limit \(queueLimitBytes) B holds no full-size packet")
        }
    }

    public var description: String {
        var parts = ["delay \(delay.milliseconds) ms"]
        if jitter > .zero { parts.append("jitter ±\(jitter.milliseconds) ms\(reorder ? "" : " in order")") }
        if lossRate > 0 { parts.append("loss \(lossRate * 100) %") }
        if let rate = rateBitsPerSecond { parts.append("rate \(Double(rate) / 1e6) Mbit/s, queue \(queueLimitBytes) B") }
        return parts.joined(separator: ", ")
    }
}
