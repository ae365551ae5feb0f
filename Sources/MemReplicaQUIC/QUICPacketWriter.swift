import QuicShim

/// Turns a connection's pending stream data into UDP datagrams: streams are
/// served a stream at a time per packet, in `SendScheduler`'s order (urgent
/// first, bulk keeping a share), and packets of equal size go out together
/// as one GSO send.
extension QUICConnectionCore {
    package enum WriteOutcome { case idle, more, blocked }

    /// Writes up to one send quantum of packets. `.more` means the batch
    /// filled up and the caller should come back after other work.
    func writePackets(now: UInt64) -> WriteOutcome {
        guard !isClosed else { return .idle }
        // An application session (HTTP/3) picks its own streams; until the
        // client is verified only handshake packets and ACKs go out, below.
        if let application, case .established = state { return application.writePackets(now: now) }
        let config = endpoint.configuration
        let maxPayload = datagramSizeLimit
        let pathMaxPayload = min(ngtcp2_conn_get_path_max_tx_udp_payload_size(conn), maxPayload)
        let quantum = ngtcp2_conn_get_send_quantum(conn)
        // The kernel takes at most 64 KiB in one GSO send.
        let maxPackets = max(1, min(quantum / max(maxPayload, 1), config.maxDatagramsPerSend, 65_000 / max(maxPayload, 1)))
        let buffer = endpoint.transmitBuffer
        precondition(buffer.count >= maxPackets * maxPayload)
        let base = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let vecs = endpoint.vectorScratch

        // Batches end at a packet of another size; the call goes on to the
        // next batch until a quantum is written, so that finding nothing
        // more to send (the usual end of a small answer) costs no extra
        // loop turn. ngtcp2's pacing still stops it when due.
        let budget = max(Int(quantum), 2 * maxPayload)
        var written = 0
        var used = 0
        var packets = 0
        var segmentSize = 0
        var ps = ngtcp2_path_storage()
        ngtcp2_path_storage_zero(&ps)
        var info = ngtcp2_pkt_info()
        updateBulkGate(now: now)

        func flush(_ length: Int, segment: Int) -> Bool {
            guard length > 0 else { return true }
            return endpoint.sendDatagrams(UnsafeRawBufferPointer(start: base, count: length),
                                          segmentSize: segment, for: self)
        }

        while true {
            let (stream, vecCount, flags) = nextStreamData(into: vecs)
            var accepted: ngtcp2_ssize = -1
            let n = qs_conn_writev_stream(conn, &ps.path, &info, base + used, maxPayload, &accepted, flags,
                                          stream?.id ?? -1, vecs.baseAddress, vecCount, now)
            if n < 0 {
                if recovered(from: Int32(n), stream: stream, accepted: accepted, flags: flags, now: now) { continue }
                _ = flush(used, segment: segmentSize)
                handleFatal(Int32(n), now: now)
                return .idle
            }
            if accepted >= 0 { consume(stream, accepted: accepted, flags: flags, now: now) }
            if n == 0 {
                // Nothing more now: congestion, pacing or no data.
                let ok = flush(used, segment: segmentSize)
                pace(now)
                return ok ? .idle : .blocked
            }
            let size = Int(n)
            bulkGate?.sent(size)
            used += size
            packets += 1
            packetsSent += 1
            bytesSent += UInt64(size)
            if packets == 1 { segmentSize = size }
            if packets > 1 && (size > segmentSize || (segmentSize > pathMaxPayload && size != segmentSize)) {
                // A GSO batch needs equal sizes (only the last may be shorter).
                let ok = flush(used - size, segment: segmentSize)
                    && endpoint.sendDatagrams(UnsafeRawBufferPointer(start: base + used - size, count: size),
                                              segmentSize: 0, for: self)
                pace(now)
                guard ok else { return .blocked }
            } else if packets == maxPackets || size < segmentSize {
                let ok = flush(used, segment: segmentSize)
                pace(now)
                guard ok else { return .blocked }
            } else {
                continue
            }
            written += used
            used = 0
            packets = 0
            if written >= budget { return .more }
        }
    }

    /// The stream to write from next (nil: only ACKs and control frames,
    /// also when the connection's credit is gone, or down to what is kept
    /// for urgent streams and none has data), its unsent data as vectors,
    /// and FIN when those vectors reach its end.
    @inline(__always)
    private func nextStreamData(into vecs: UnsafeMutableBufferPointer<ngtcp2_vec>)
        -> (stream: QUICStreamCore?, vecCount: Int, flags: UInt32) {
        var flags = UInt32(NGTCP2_WRITE_STREAM_FLAG_MORE)
        let credit = ngtcp2_conn_get_max_data_left(conn)
        let ready: (QUICStreamCore) -> Bool = { $0.hasDataToSend && !$0.flowBlocked && !$0.closedByStack }
        let bulkMayGo = credit > urgentCreditReserve && bulkGate?.bulkMayWrite != false
        guard credit > 0,
              let s = bulkMayGo ? sendQueue.next(ready: ready) : sendQueue.nextUrgent(ready: ready)
        else {
            return (nil, 0, flags)
        }
        let vecCount = s.sendBuffer.unsentVectors(into: vecs)
        let coversAll = vecCount < vecs.count || vecsTotal(vecs, vecCount) == s.sendBuffer.unsent
        if s.finQueued && coversAll { flags |= UInt32(NGTCP2_WRITE_STREAM_FLAG_FIN) }
        return (s, vecCount, flags)
    }

    /// A stream-level refusal from ngtcp2 that the writer goes on past
    /// (true); false for an error that ends the connection.
    @inline(__always)
    private func recovered(from error: Int32, stream: QUICStreamCore?, accepted: ngtcp2_ssize, flags: UInt32,
                           now: UInt64) -> Bool {
        switch error {
        case NGTCP2_ERR_STREAM_DATA_BLOCKED:
            stream?.flowBlocked = true
            dequeue(stream)
        case NGTCP2_ERR_STREAM_SHUT_WR, NGTCP2_ERR_STREAM_NOT_FOUND:
            stream?.failSend(.streamReset(errorCode: 0))
            dequeue(stream)
        case NGTCP2_ERR_WRITE_MORE:
            consume(stream, accepted: accepted, flags: flags, now: now)
        default:
            return false
        }
        return true
    }

    /// The largest datagram to write now. Until the handshake is confirmed
    /// no more than `maxUDPPayloadSize`, even to a peer on this host:
    /// ngtcp2 pads every datagram holding a client's Initial to the whole
    /// buffer it is given (the Finished flight too).
    package var datagramSizeLimit: Int {
        let limit = ngtcp2_conn_get_max_tx_udp_payload_size(conn)
        guard !isHandshakeConfirmed else { return limit }
        return min(limit, endpoint.configuration.maxUDPPayloadSize)
    }

    /// Starts the pacing interval for what was just sent. Not before the
    /// handshake completes: until a real RTT sample exists ngtcp2 paces
    /// from the 333 ms initial RTT, which spaced our handshake flights
    /// ~25 ms apart on loopback (a 24 ms handshake instead of 2 ms).
    private func pace(_ now: UInt64) {
        guard endpoint.configuration.pacing, ngtcp2_conn_get_handshake_completed(conn) != 0 else { return }
        ngtcp2_conn_update_pkt_tx_time(conn, now)
    }

    private func vecsTotal(_ vecs: UnsafeMutableBufferPointer<ngtcp2_vec>, _ n: Int) -> Int {
        var total = 0
        for i in 0..<n { total += vecs[i].len }
        return total
    }

    /// Records what ngtcp2 took from the stream and rotates it to the back
    /// of the queue so the next packet serves the next stream.
    private func consume(_ stream: QUICStreamCore?, accepted: ngtcp2_ssize, flags: UInt32, now: UInt64) {
        guard let s = stream, accepted >= 0 else { return }
        sendQueue.tookTurn(s)
        if s.urgent { bulkGate?.urgentSent(now: now) }
        let took = Int(accepted)
        let finWanted = flags & UInt32(NGTCP2_WRITE_STREAM_FLAG_FIN) != 0
        if finWanted && took == s.sendBuffer.unsent { s.finSent = true }
        s.sendBuffer.markSent(took)
        if s.hasDataToSend { sendQueue.rotate(s) } else { sendQueue.remove(s) }
    }

    /// Gives the bulk gate this round's controller state.
    private func updateBulkGate(now: UInt64) {
        guard bulkGate != nil else { return }
        var cs = ngtcp2_conn_stat()
        qs_conn_get_conn_stat(conn, &cs)
        bulkGate?.update(now: now, bytesInFlight: cs.bytes_in_flight, pacingRate: cs.pacing_rate,
                         minRTT: cs.min_rtt == UInt64.max ? 0 : cs.min_rtt)
    }

    private func dequeue(_ stream: QUICStreamCore?) {
        if let s = stream { sendQueue.remove(s) }
    }
}
