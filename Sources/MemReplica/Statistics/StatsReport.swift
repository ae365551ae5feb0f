import MemReplicaQUIC
import MemReplicaTransportCore
import Foundation

/// What `memreplica stats` shows: one running peer's counters, rates and
/// latency distributions, per connection and per region. Like
/// `StatusReport`, the JSON form is a contract for scripts: fields are only
/// added, never renamed. Durations are in seconds, sizes in bytes; a field
/// that does not apply to a region's role is left out.
public struct StatsReport: Codable, Sendable, Equatable {
    public var version: String
    /// This peer's name (its certificate's common name).
    public var peer: String
    public var takenAt: Date
    public var uptimeSeconds: Double
    /// Length of the sliding window the `window` distributions cover.
    public var windowSeconds: Double
    public var connections: [Connection]
    public var regions: [Region]
    /// The memory budget on stream buffers (`MemoryBudget`), what they
    /// hold now and at most so far, and the streams reset because their
    /// peer stopped reading.
    public var memoryBudgetBytes: Int?
    public var bufferedBytes: Int?
    public var peakBufferedBytes: Int?
    public var stalledStreamsReset: UInt64?
    /// Regions this peer migrated (as the source) or is migrating.
    public var migrations: [Migration]?

    /// One region's migrations from this peer.
    public struct Migration: Codable, Sendable, Equatable {
        public var region: String
        /// The migration running now, if any.
        public var running: MigrationProgress?
        public var last: MigrationReport?
        /// Migrations by outcome ("handed over", "aborted", "uncertain").
        public var outcomes: [String: Int]
    }

    public init(version: String, peer: String, takenAt: Date, uptimeSeconds: Double, windowSeconds: Double,
                connections: [Connection], regions: [Region], memory: MemoryBudget? = nil) {
        self.version = version
        self.peer = peer
        self.takenAt = takenAt
        self.uptimeSeconds = uptimeSeconds
        self.windowSeconds = windowSeconds
        self.connections = connections
        self.regions = regions
        memoryBudgetBytes = memory?.limit
        bufferedBytes = memory?.used
        peakBufferedBytes = memory?.peak
        stalledStreamsReset = memory?.streamsResetForStall
    }

    /// One live connection, as its transport reports it (ngtcp2's
    /// recovery state for QUIC, TCP_INFO for TCP).
    public struct Connection: Codable, Sendable, Equatable {
        public var remoteAddress: String
        /// The other peer's certificate: common name (or subject), fingerprint.
        public var peer: String
        public var fingerprint: String
        /// True when this peer dialled out.
        public var initiatedLocally: Bool
        public var latestRTTSeconds: Double
        public var minRTTSeconds: Double
        public var smoothedRTTSeconds: Double
        public var rttVarianceSeconds: Double
        /// The congestion controller (`ConnectionStatistics.congestionControl`).
        public var congestionControl: String
        public var congestionWindowBytes: UInt64
        public var bytesInFlight: UInt64
        public var deliveryRateBytesPerSecond: UInt64
        /// Probe timeouts in a row without an acknowledgement (QUIC), or
        /// the retransmission backoff (TCP); 0 on a healthy path.
        public var ptoCount: Int
        public var bytesSent: UInt64
        public var bytesReceived: UInt64
        public var packetsSent: UInt64
        public var packetsReceived: UInt64
        /// Largest payload per packet: QUIC's UDP payload limit (up to
        /// `QUICConfiguration.hostLocalUDPPayloadSize` to a peer on this
        /// host, else `maxUDPPayloadSize`), TCP's MSS.
        public var maxPacketPayloadBytes: Int
        /// Connect call to confirmed handshake; only for connections we made.
        public var handshakeSeconds: Double?
        /// Connections with the same peer in the same direction before this one.
        public var reconnects: Int
        /// Time bulk streams were held to keep the bottleneck queue short
        /// while answers flowed (`peer --bulk-queue`); absent without the gate.
        public var bulkQueueHeldSeconds: Double?

        public init(_ summary: ConnectionSummary, reconnects: Int) {
            let s = summary.statistics
            remoteAddress = summary.remoteAddress
            peer = summary.identity.commonName ?? summary.identity.subject
            fingerprint = summary.identity.fingerprint
            initiatedLocally = summary.initiatedLocally
            latestRTTSeconds = s.latestRTT.seconds
            minRTTSeconds = s.minRTT.seconds
            smoothedRTTSeconds = s.smoothedRTT.seconds
            rttVarianceSeconds = s.rttVariance.seconds
            congestionControl = s.congestionControl
            congestionWindowBytes = s.congestionWindow
            bytesInFlight = s.bytesInFlight
            deliveryRateBytesPerSecond = s.deliveryRateBytesPerSecond
            ptoCount = s.ptoCount
            bytesSent = s.bytesSent
            bytesReceived = s.bytesReceived
            packetsSent = s.packetsSent
            packetsReceived = s.packetsReceived
            maxPacketPayloadBytes = s.maxUDPPayloadSize
            handshakeSeconds = s.handshakeDuration?.seconds
            self.reconnects = reconnects
            bulkQueueHeldSeconds = s.bulkQueueHeld?.seconds
        }
    }

    public struct Region: Codable, Sendable, Equatable {
        public var name: String
        /// "primary" (exported here) or "replica" (mirrored here).
        public var role: String
        /// For a replica: eager or lazy (post-copy).
        public var lazy: Bool?
        public var size: Int
        public var chunkSize: Int
        /// Primary: WRITEs sent to all its mirrors. Eager replica: WRITEs
        /// applied (bytes are not counted there).
        public var chunksPushed: UInt64?
        public var bytesPushed: UInt64?
        /// Primary: chunks sent in answer to lazy mirrors' READs.
        public var chunksPulled: UInt64?
        public var bytesPulled: UInt64?
        /// Primary: chunks the dirty tracker found changed, per second over
        /// the last 10 s (and the same in bytes, at whole chunks).
        public var dirtyChunksPerSecond: Double?
        public var dirtyBytesPerSecond: Double?
        /// Primary with a mirror: the dirty tracker's scans.
        public var scan: Scan?
        /// Primary: what its eager subscriptions put on the wire against
        /// the bytes they found dirty (zero, redundant and delta chunks,
        /// compression ratio and CPU).
        public var wire: WireSavings?
        /// Primary: each mirror served now.
        public var replicas: [Replica]?
        /// The region's id and owner generation (a primary's own; a
        /// replica's as its primary's last catalog gave them).
        public var regionID: String?
        public var generation: UInt64?
        /// Replica: true only while its copy is the primary's current bytes
        /// (connected, initial pass applied and self-checked); false
        /// whenever it may be stale or incomplete.
        public var synced: Bool?
        /// Why the region is not served or not current. Primary: its
        /// backing failed (e.g. the file was truncated under the peer).
        /// Replica: why the last attempt to mirror failed (a refused or
        /// unreachable primary, no room for the file ...), until it is
        /// synced again.
        public var problem: String?
        /// Durable replica: its state file says the local file is an exact
        /// copy of the primary at some version (not necessarily the latest).
        public var durableComplete: Bool?
        /// Replica: where it mirrors from, what it holds, how often it reconnected.
        public var source: String?
        public var chunksPresent: Int?
        public var lastAppliedVersion: UInt64?
        public var reconnects: Int?
        /// Lazy replica: page faults raised, and served.
        public var faults: Int?
        public var faultsServed: Int?
        /// Primary: copy for sending to the mirror's ACK, per chunk version.
        public var replicationLag: LatencySummary?
        /// Lazy replica: page fault to chunk installed.
        public var faultLatency: LatencySummary?
        /// Primary: READ arrived to its DATA queued.
        public var readLatency: LatencySummary?

        public init(name: String, role: String, size: Int, chunkSize: Int) {
            self.name = name
            self.role = role
            self.size = size
            self.chunkSize = chunkSize
        }
    }

    public struct Scan: Codable, Sendable, Equatable {
        /// Which tracker (soft-dirty, write-protect, hash scan ...).
        public var tracker: String
        public var scans: Int
        public var lastSeconds: Double
        public var meanSeconds: Double
        public var longestSeconds: Double
        public var totalSeconds: Double
        /// Changed chunks all scans reported.
        public var changedChunks: Int

        public init(_ status: DirtyTrackingStatus) {
            let s = status.statistics
            tracker = "\(status.kind)"
            scans = s.scans
            lastSeconds = s.lastDuration.seconds
            meanSeconds = s.meanDuration.seconds
            longestSeconds = s.longestDuration.seconds
            totalSeconds = s.totalDuration.seconds
            changedChunks = s.totalChangedChunks
        }
    }

    /// One mirror of a primary region.
    public struct Replica: Codable, Sendable, Equatable {
        public var peer: String
        public var synced: Bool
        public var sentVersion: UInt64
        public var acknowledgedVersion: UInt64
        /// Versions sent and not yet acknowledged.
        public var versionLag: UInt64
        /// How long the oldest of those has waited; 0 when none does.
        public var timeLagSeconds: Double

        public init(peer: String, synced: Bool, sentVersion: UInt64, acknowledgedVersion: UInt64, versionLag: UInt64,
                    timeLagSeconds: Double) {
            self.peer = peer
            self.synced = synced
            self.sentVersion = sentVersion
            self.acknowledgedVersion = acknowledgedVersion
            self.versionLag = versionLag
            self.timeLagSeconds = timeLagSeconds
        }
    }
}
