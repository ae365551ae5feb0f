import MemReplicaQUIC
import MemReplicaTransportCore
import Foundation

/// What `memreplica status` shows: one running peer's view of itself and of
/// the peers connected to it. The JSON form is a contract for scripts, so
/// fields are only ever added, never renamed.
public struct StatusReport: Codable, Sendable, Equatable {
    public var version: String
    /// The address the peer's QUIC socket is bound to (`:PORT` = all interfaces).
    public var listenAddress: String
    public var identity: Identity
    public var startedAt: Date
    public var uptimeSeconds: Double
    public var peers: [Peer]
    /// Replicated memory regions. Always empty until exports and mirrors
    /// exist; kept in the format now so scripts need not change then.
    public var regions: [Region]

    public init(version: String, listenAddress: String, identity: Identity, startedAt: Date,
                uptimeSeconds: Double, peers: [Peer], regions: [Region] = []) {
        self.version = version
        self.listenAddress = listenAddress
        self.identity = identity
        self.startedAt = startedAt
        self.uptimeSeconds = uptimeSeconds
        self.peers = peers
        self.regions = regions
    }

    public struct Identity: Codable, Sendable, Equatable {
        public var subject: String
        public var commonName: String?
        /// SHA-256 of the DER certificate, lower-case hex.
        public var fingerprint: String

        public init(_ identity: PeerIdentity) {
            subject = identity.subject
            commonName = identity.commonName
            fingerprint = identity.fingerprint
        }
    }

    public struct Peer: Codable, Sendable, Equatable {
        public var remoteAddress: String
        public var identity: Identity
        /// True when this peer dialled out; false for connections it accepted.
        public var initiatedLocally: Bool
        /// The congestion controller sending to this peer.
        public var congestionControl: String
        public var smoothedRTTMilliseconds: Double
        public var minRTTMilliseconds: Double
        public var latestRTTMilliseconds: Double
        public var bytesSent: UInt64
        public var bytesReceived: UInt64
        public var packetsSent: UInt64
        public var packetsReceived: UInt64

        public init(_ summary: ConnectionSummary) {
            remoteAddress = summary.remoteAddress
            identity = Identity(summary.identity)
            initiatedLocally = summary.initiatedLocally
            let s = summary.statistics
            congestionControl = s.congestionControl
            smoothedRTTMilliseconds = s.smoothedRTT.milliseconds
            minRTTMilliseconds = s.minRTT.milliseconds
            latestRTTMilliseconds = s.latestRTT.milliseconds
            bytesSent = s.bytesSent
            bytesReceived = s.bytesReceived
            packetsSent = s.packetsSent
            packetsReceived = s.packetsReceived
        }
    }

    /// A replicated region as this peer sees it.
    public struct Region: Codable, Sendable, Equatable {
        public var name: String
        /// "primary" (exported here) or "replica" (mirrored here).
        public var role: String
        public var path: String
        public var size: Int
        public var chunkSize: Int
        /// For a replica: chunks received at least once, and where from.
        public var chunksPresent: Int?
        public var chunks: Int
        public var lastAppliedVersion: UInt64?
        public var source: String?
        /// The region's id and owner generation (see `StatsReport.Region`).
        public var regionID: String?
        public var generation: UInt64?
        /// Replica: whether its copy is the primary's current bytes now.
        public var synced: Bool?
        /// Why the region is not served or not current. Primary: its
        /// backing failed (e.g. the file was truncated under the peer).
        /// Replica: why the last attempt to mirror failed (a refused or
        /// unreachable primary, no room for the file ...), until it is
        /// synced again.
        public var problem: String?
        /// Durable replica: what its state file says of the local copy.
        public var durable: Durable?
        /// For a primary: the mirrors it serves now.
        public var mirrors: [Mirror]?
        /// For a lazy (post-copy) replica: its faults. `lastAppliedVersion`
        /// is then the last DIRTY epoch applied.
        public var lazy: Lazy?
        /// Processes of this host attached through the control socket now.
        public var attached: [AttachedProcess]?
        /// A migration of this region running now (source side), and the
        /// last one's report.
        public var migration: MigrationProgress?
        public var lastMigration: MigrationReport?

        public struct AttachedProcess: Codable, Sendable, Equatable {
            public var pid: Int32
            /// "writer": its stores to a primary are tracked; "lazy reader":
            /// its faults on a lazy replica are served.
            public var mode: String
            public init(pid: Int32, mode: String) { self.pid = pid; self.mode = mode }
        }

        public struct Durable: Codable, Sendable, Equatable {
            /// The file is an exact copy of the primary at `version` of
            /// `generation` (it may be behind the primary now: see `synced`).
            public var complete: Bool
            public var version: UInt64
            public var generation: UInt64
            public var recordedAt: Date
        }

        public struct Lazy: Codable, Sendable, Equatable {
            public var faults: Int
            public var faultsServed: Int
            public var chunksInvalidated: Int
            /// How long the longest-waiting unserved fault has waited.
            public var oldestFaultWaitingSeconds: Double?
            /// Chunks that arrived but could not be installed yet (retried),
            /// and why; attached readers failed because chunks could not come.
            public var installsPending: Int?
            public var installError: String?
            public var readersFailed: Int?
        }

        public struct Mirror: Codable, Sendable, Equatable {
            public var peer: String
            public var sentVersion: UInt64
            public var acknowledgedVersion: UInt64
            /// Versions sent but not yet acknowledged.
            public var versionLag: UInt64
            public var synced: Bool
            /// Streams the initial pass went over (the region stream and its
            /// lanes); nil until the pass is sent.
            public var passStreams: Int?
        }

        public init(name: String, role: String, path: String, size: Int, chunkSize: Int, chunks: Int,
                    chunksPresent: Int? = nil, lastAppliedVersion: UInt64? = nil, source: String? = nil) {
            self.name = name; self.role = role; self.path = path; self.size = size; self.chunkSize = chunkSize
            self.chunks = chunks; self.chunksPresent = chunksPresent; self.lastAppliedVersion = lastAppliedVersion
            self.source = source
        }
    }

    /// JSON as the control socket speaks it: one line, ISO 8601 dates.
    public static func makeEncoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return encoder
    }

    public static func makeDecoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
