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
    /// As `willSend(region:chunk:version:at:)`, saying which mirror gets it
    /// and how many bytes: versions count per subscription, so with two
    /// mirrors of one region only the peer tells them apart.
    func willSend(region: String, peer: String, chunk: Int, bytes: Int, version: UInt64, at: ContinuousClock.Instant)
    /// A READ for `chunks` chunks (`bytes` in all) was answered: DATA queued
    /// `duration` after the READ arrived.
    func servedRead(region: String, peer: String, chunks: Int, bytes: Int, duration: Duration)
}

extension ReplicationObserver {
    public func willSend(region: String, peer: String, chunk: Int, bytes: Int, version: UInt64, at: ContinuousClock.Instant) {
        willSend(region: region, chunk: chunk, version: version, at: at)
    }

    public func servedRead(region: String, peer: String, chunks: Int, bytes: Int, duration: Duration) {}
}
