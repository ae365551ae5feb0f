import QuicShim

/// What a client keeps from one connection to resume the next: the TLS
/// session as GnuTLS packs it (the ticket, the resumption secret and the
/// peer's certificate) and the server's transport parameters, which bound
/// what may be sent in 0-RTT (RFC 9000 §7.4.1). Held in memory only.
struct SessionTicket {
    let session: [UInt8]
    let initialMaxStreamsBidi: UInt64
    let initialMaxStreamsUni: UInt64
    let initialMaxStreamDataBidiLocal: UInt64
    let initialMaxStreamDataBidiRemote: UInt64
    let initialMaxStreamDataUni: UInt64
    let initialMaxData: UInt64
    let activeConnectionIDLimit: UInt64
    let maxIdleTimeout: UInt64
    let maxUDPPayloadSize: UInt64
    let disableActiveMigration: UInt8
    let maxDatagramFrameSize: UInt64

    /// Copies the fields ngtcp2 0.12 reads for 0-RTT from the server's
    /// parameters (no pointers: the version information is left out).
    init(session: [UInt8], serverParameters p: ngtcp2_transport_params) {
        self.session = session
        initialMaxStreamsBidi = p.initial_max_streams_bidi
        initialMaxStreamsUni = p.initial_max_streams_uni
        initialMaxStreamDataBidiLocal = p.initial_max_stream_data_bidi_local
        initialMaxStreamDataBidiRemote = p.initial_max_stream_data_bidi_remote
        initialMaxStreamDataUni = p.initial_max_stream_data_uni
        initialMaxData = p.initial_max_data
        activeConnectionIDLimit = p.active_connection_id_limit
        maxIdleTimeout = p.max_idle_timeout
        maxUDPPayloadSize = p.max_udp_payload_size
        disableActiveMigration = p.disable_active_migration
        maxDatagramFrameSize = p.max_datagram_frame_size
    }

    /// The remembered parameters, for `ngtcp2_conn_set_early_remote_transport_params`.
    var earlyTransportParameters: ngtcp2_transport_params {
        var p = ngtcp2_transport_params()
        p.initial_max_streams_bidi = initialMaxStreamsBidi
        p.initial_max_streams_uni = initialMaxStreamsUni
        p.initial_max_stream_data_bidi_local = initialMaxStreamDataBidiLocal
        p.initial_max_stream_data_bidi_remote = initialMaxStreamDataBidiRemote
        p.initial_max_stream_data_uni = initialMaxStreamDataUni
        p.initial_max_data = initialMaxData
        p.active_connection_id_limit = activeConnectionIDLimit
        p.max_idle_timeout = maxIdleTimeout
        p.max_udp_payload_size = maxUDPPayloadSize
        p.disable_active_migration = disableActiveMigration
        p.max_datagram_frame_size = maxDatagramFrameSize
        return p
    }
}

/// Session tickets per server, for one endpoint (loop thread only). Each
/// ticket is used once (RFC 8446 §C.4: reuse links connections and is
/// what anti-replay rejects); every connection brings a fresh one. Bounded
/// in tickets per server and in servers.
struct SessionTicketCache {
    static let ticketsPerServer = 4
    static let servers = 256

    private var tickets: [String: [SessionTicket]] = [:]
    /// Servers, least recently stored first.
    private var order: [String] = []

    mutating func store(_ ticket: SessionTicket, for server: String) {
        var list = tickets[server] ?? []
        list.append(ticket)
        if list.count > Self.ticketsPerServer { list.removeFirst(list.count - Self.ticketsPerServer) }
        tickets[server] = list
        order.removeAll { $0 == server }
        order.append(server)
        while order.count > Self.servers {
            tickets[order.removeFirst()] = nil
        }
    }

    /// The newest ticket for `server`, removed from the cache.
    mutating func take(for server: String) -> SessionTicket? {
        guard var list = tickets[server], let ticket = list.popLast() else { return nil }
        if list.isEmpty {
            tickets[server] = nil
            order.removeAll { $0 == server }
        } else {
            tickets[server] = list
        }
        return ticket
    }

    func count(for server: String) -> Int { tickets[server]?.count ?? 0 }
}
