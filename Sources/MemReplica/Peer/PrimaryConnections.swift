import MemReplicaSystem
import MemReplicaTransportCore
import Logging

/// The connections a peer's mirrors hold to their primaries: one per
/// primary address, shared by every mirror following a region there, each
/// region on streams of its own. A peer mirroring 1024 regions from one
/// primary makes one handshake and holds one congestion controller, one
/// receive window and one set of timers, not 1024 of each (which the
/// primary's caps would also refuse: `PeerLimits.maxConnectionsPerIdentity`
/// and the memory budget's per-connection window).
///
/// A lease gets the connection and the primary's catalog. The catalog is
/// fetched once per connection on the stream that carried HELLO (in 0-RTT
/// on a resumed session) and shared for `catalogReuse`; a lease asking for
/// a fresh one, or coming later, sends HELLO on a stream of its own. When a
/// connection ends every mirror on it sees its streams fail; the next lease
/// connects again, and leases that arrive meanwhile wait on that one
/// attempt. A connection nobody leases any more is closed.
public final class PrimaryConnections: Sendable {
    private let endpoint: any Transport
    private let statistics: PeerStatistics?
    private let logger: Logger
    private let slots = Locked(Slots())

    /// How long a fetched catalog is handed to new leases without asking
    /// the primary again: long enough that mirrors starting together share
    /// one, short enough that a mirror started later sees regions exported
    /// or handed over since (a mirror that failed asks afresh anyway).
    public static let catalogReuse: Duration = .seconds(1)

    fileprivate struct Key: Hashable {
        let address: PeerAddress
        let offers: UInt64
    }

    private struct Slots {
        var byKey: [Key: Slot] = [:]
        var nextID: UInt64 = 0
    }

    /// One primary's connection: being made, then in use until it closes
    /// or its last lease is released.
    private struct Slot {
        let id: UInt64
        let opening: Task<Opened, any Error>
        var users = 0
        var catalog: (at: ContinuousClock.Instant, entries: [Frame.CatalogEntry])?
    }

    private struct Opened: Sendable {
        let connection: any TransportConnection
        let catalog: [Frame.CatalogEntry]
    }

    /// One mirror's use of a primary's connection; `release` it when done.
    public struct Lease: Sendable {
        public let connection: any TransportConnection
        /// What the primary exports to us, as of at most `catalogReuse` ago.
        public let catalog: [Frame.CatalogEntry]
        fileprivate let key: Key
        fileprivate let slot: UInt64
    }

    public init(endpoint: any Transport, statistics: PeerStatistics? = nil, logger: Logger) {
        self.endpoint = endpoint
        self.statistics = statistics
        self.logger = logger
    }

    /// The connection to `address` (made if there is none) and its catalog.
    /// `freshCatalog`: ask the primary again even if a recent one is at hand.
    public func lease(_ address: PeerAddress, offers: WireCapabilities, freshCatalog: Bool) async throws -> Lease {
        let key = Key(address: address, offers: offers.rawValue)
        let (id, opening) = slots.withLock { s -> (UInt64, Task<Opened, any Error>) in
            if var slot = s.byKey[key] {
                slot.users += 1
                s.byKey[key] = slot
                return (slot.id, slot.opening)
            }
            s.nextID += 1
            let id = s.nextID
            let opening = Task { try await self.open(address, offers: offers, key: key, slot: id) }
            s.byKey[key] = Slot(id: id, opening: opening, users: 1)
            return (id, opening)
        }
        let opened: Opened
        do {
            opened = try await opening.value
        } catch {
            // Forget the failed attempt: the next lease tries again.
            slots.withLock { s in
                if s.byKey[key]?.id == id { s.byKey[key] = nil }
            }
            throw error
        }
        let lease = { Lease(connection: opened.connection, catalog: $0, key: key, slot: id) }
        let reusable = slots.withLock { s -> [Frame.CatalogEntry]? in
            guard let slot = s.byKey[key], slot.id == id else { return nil }
            if let catalog = slot.catalog {
                return catalog.at.duration(to: .now) < Self.catalogReuse ? catalog.entries : nil
            }
            // The catalog that came with the connection, first use.
            s.byKey[key]?.catalog = (.now, opened.catalog)
            return opened.catalog
        }
        if !freshCatalog, let reusable { return lease(reusable) }
        do {
            let entries = try await fetchCatalog(over: opened.connection, offers: offers)
            slots.withLock { s in
                if s.byKey[key]?.id == id { s.byKey[key]?.catalog = (.now, entries) }
            }
            return lease(entries)
        } catch {
            await release(lease([]))
            throw error
        }
    }

    /// Ends one mirror's use; the connection closes with its last user.
    public func release(_ lease: Lease) async {
        let last = slots.withLock { s -> Bool in
            guard var slot = s.byKey[lease.key], slot.id == lease.slot else { return false }
            slot.users -= 1
            if slot.users > 0 {
                s.byKey[lease.key] = slot
                return false
            }
            s.byKey[lease.key] = nil
            return true
        }
        if last { await lease.connection.close(errorCode: 0, reason: "no mirror follows this primary now") }
    }

    /// Connections open now (for tests and status).
    public var openCount: Int { slots.withLock { $0.byKey.count } }

    private func open(_ address: PeerAddress, offers: WireCapabilities, key: Key, slot: UInt64) async throws -> Opened {
        let (connection, control) = try await connectSendingHello(to: address, offers: offers)
        let catalog: [Frame.CatalogEntry]
        do {
            catalog = try await Self.catalog(after: FrameStream(control))
        } catch {
            await connection.close(errorCode: 0, reason: "mirror restarting")
            throw error
        }
        statistics?.connectionEstablished(fingerprint: connection.peerIdentity.fingerprint, initiatedLocally: true)
        let stats = await connection.statistics()
        if stats.sessionResumed {
            logger.info("resumed session (0-RTT \(stats.earlyData.rawValue))", metadata: ["to": "\(address)"])
        }
        // Once it ends, new leases connect again.
        Task { [weak self] in
            _ = await connection.waitClosed()
            self?.slots.withLock { s in
                if s.byKey[key]?.id == slot { s.byKey[key] = nil }
            }
        }
        return Opened(connection: connection, catalog: catalog)
    }

    private func hello(offers: WireCapabilities) throws -> [UInt8] {
        let me = endpoint.localIdentity
        return try Frame.hello(.init(peerName: me.commonName ?? me.subject, capabilities: offers.rawValue)).encoded()
    }

    /// Connects and sends HELLO on the control stream. Over QUIC the HELLO
    /// rides in 0-RTT when a session ticket is at hand (it is replay-safe);
    /// other transports send it once connected.
    private func connectSendingHello(to address: PeerAddress, offers: WireCapabilities) async throws
        -> (any TransportConnection, any TransportStream) {
        let hello = try hello(offers: offers)
        if let early = endpoint as? any EarlyDataTransport {
            return try await early.connect(to: address, replaySafeEarlyData: hello)
        }
        let connection = try await endpoint.connect(to: address)
        do {
            let control = try await connection.openStream()
            try await control.write(hello)
            return (connection, control)
        } catch {
            await connection.close(errorCode: 0, reason: "mirror restarting")
            throw error
        }
    }

    /// HELLO on a new stream of an open connection, for the catalog as it is now.
    private func fetchCatalog(over connection: any TransportConnection, offers: WireCapabilities) async throws
        -> [Frame.CatalogEntry] {
        let control = try await connection.openStream()
        try await control.write(try hello(offers: offers))
        return try await Self.catalog(after: FrameStream(control))
    }

    /// A control stream whose HELLO we sent: the exporter's HELLO, then its CATALOG.
    private static func catalog(after frames: FrameStream) async throws -> [Frame.CatalogEntry] {
        try await frames.stream.finish()
        guard case .hello(let hello)? = try await frames.receive() else {
            throw ProtocolViolation(.unexpectedFrame, "the control stream starts with HELLO")
        }
        guard hello.protocolVersion == Frame.protocolVersion else {
            throw ProtocolViolation(.unsupportedVersion, "peer speaks protocol \(hello.protocolVersion)")
        }
        guard case .catalog(let entries)? = try await frames.receive() else {
            throw ProtocolViolation(.unexpectedFrame, "CATALOG follows HELLO")
        }
        return entries
    }
}
