import QuicShim

/// What a client keeps from one connection to resume the next: the TLS
/// session as GnuTLS packs it (the ticket, the resumption secret and the
/// peer's certificate) and the server's transport parameters, which bound
/// what may be sent in 0-RTT (RFC 9000 §7.4.1). Held in memory only.
struct SessionTicket {
    let session: [UInt8]
    /// The server's parameters as 0-RTT obeys them, for
    /// `ngtcp2_conn_set_early_remote_transport_params`.
    let earlyTransportParameters: ngtcp2_transport_params

    /// Keeps the fields ngtcp2 0.12 reads for 0-RTT from the server's
    /// parameters, the rest zero (no pointers: the version information is
    /// left out).
    init(session: [UInt8], serverParameters p: ngtcp2_transport_params) {
        self.session = session
        var kept = ngtcp2_transport_params()
        kept.initial_max_streams_bidi = p.initial_max_streams_bidi
        kept.initial_max_streams_uni = p.initial_max_streams_uni
        kept.initial_max_stream_data_bidi_local = p.initial_max_stream_data_bidi_local
        kept.initial_max_stream_data_bidi_remote = p.initial_max_stream_data_bidi_remote
        kept.initial_max_stream_data_uni = p.initial_max_stream_data_uni
        kept.initial_max_data = p.initial_max_data
        kept.active_connection_id_limit = p.active_connection_id_limit
        kept.max_idle_timeout = p.max_idle_timeout
        kept.max_udp_payload_size = p.max_udp_payload_size
        kept.disable_active_migration = p.disable_active_migration
        kept.max_datagram_frame_size = p.max_datagram_frame_size
        earlyTransportParameters = kept
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
