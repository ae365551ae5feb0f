/// Hears what a primary sends and what its mirrors acknowledge, as it
/// happens: the seam for latency statistics and the lag benchmark. Called
/// from the region's publishing tasks, so implementations must be quick and
/// must not block.
public protocol ReplicationObserver: Sendable {
    /// `version` of `chunk` is about to be copied for sending: its bytes
    /// include every write to the chunk made before `at`.
    func willSend(region: String, chunk: Int, version: UInt64, at: ContinuousClock.Instant)
    /// A mirror reported every version up to `version` applied in its mapping.
    func acknowledged(region: String, peer: String, version: UInt64, at: ContinuousClock.Instant)
}
