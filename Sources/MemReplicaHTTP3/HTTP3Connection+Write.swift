import QuicShim
import MemReplicaQUIC

/// Packets for an HTTP/3 connection: nghttp3 decides which stream's bytes
/// go next (its own control and QPACK streams, then responses), ngtcp2
/// packs them. One datagram per send: the face serves statistics and
/// single chunks, not bulk replication.
extension HTTP3Connection {
    /// Packets written per call before other connections get a turn.
    static let maxPacketsPerWrite = 64

    func writePackets(now: UInt64) -> QUICConnectionCore.WriteOutcome {
        guard let core, let conn = core.conn, let h3, !closed else { return .idle }
        let maxPayload = core.datagramSizeLimit
        let base = endpoint.transmitBuffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var ps = ngtcp2_path_storage()
        ngtcp2_path_storage_zero(&ps)
        var info = ngtcp2_pkt_info()
        var packets = 0
        while packets < Self.maxPacketsPerWrite {
            var streamID: Int64 = -1
            var fin: Int32 = 0
            var count = 0
            // Connection-level credit gone: only ACKs and control frames.
            if ngtcp2_conn_get_max_data_left(conn) > 0 {
                let n = nghttp3_conn_writev_stream(h3, &streamID, &fin, vectors.baseAddress, vectors.count)
                guard n >= 0 else {
                    core.handleFatal(failed(Int32(n)), now: now)
                    return .idle
                }
                count = Int(n)
            }
            var flags = UInt32(NGTCP2_WRITE_STREAM_FLAG_MORE)
            if fin != 0 { flags |= UInt32(NGTCP2_WRITE_STREAM_FLAG_FIN) }
            var accepted: ngtcp2_ssize = -1
            // nghttp3_vec and ngtcp2_vec are the same {base, len} pair.
            let written = UnsafeMutableRawPointer(vectors.baseAddress!).withMemoryRebound(to: ngtcp2_vec.self, capacity: vectors.count) { v in
                qs_conn_writev_stream(conn, &ps.path, &info, base, maxPayload, &accepted, flags, streamID, v, count, now)
            }
            if written < 0 {
                switch Int32(written) {
                case NGTCP2_ERR_STREAM_DATA_BLOCKED:
                    nghttp3_conn_block_stream(h3, streamID)
                    continue
                case NGTCP2_ERR_STREAM_SHUT_WR:
                    nghttp3_conn_shutdown_stream_write(h3, streamID)
                    continue
                case NGTCP2_ERR_WRITE_MORE:
                    guard addWriteOffset(h3, streamID, accepted, core: core, now: now) else { return .idle }
                    continue
                default:
                    core.handleFatal(Int32(written), now: now)
                    return .idle
                }
            }
            guard addWriteOffset(h3, streamID, accepted, core: core, now: now) else { return .idle }
            if written == 0 {
                pace(conn, now)
                return .idle
            }
            packets += 1
            core.packetsSent += 1
            core.bytesSent += UInt64(written)
            let sent = endpoint.sendDatagrams(UnsafeRawBufferPointer(start: base, count: Int(written)), segmentSize: 0, for: core)
            pace(conn, now)
            if !sent { return .blocked }
        }
        return .more
    }

    /// Tells nghttp3 how much of its stream data ngtcp2 took.
    private func addWriteOffset(_ h3: OpaquePointer, _ streamID: Int64, _ accepted: ngtcp2_ssize,
                                core: QUICConnectionCore, now: UInt64) -> Bool {
        guard streamID >= 0, accepted >= 0 else { return true }
        let rc = nghttp3_conn_add_write_offset(h3, streamID, Int(accepted))
        guard rc == 0 else {
            core.handleFatal(failed(rc), now: now)
            return false
        }
        return true
    }

    /// As the stream writer paces: after the handshake, when pacing is on.
    private func pace(_ conn: OpaquePointer, _ now: UInt64) {
        guard endpoint.configuration.pacing else { return }
        ngtcp2_conn_update_pkt_tx_time(conn, now)
    }
}
