import QuicShim

/// ngtcp2's callback table. The crypto entries are ngtcp2's own GnuTLS glue;
/// the rest forward to the connection (user_data) or stream
/// (stream_user_data). They run on the loop thread, inside ngtcp2 calls, so
/// they only record state and resume continuations: never call back into
/// ngtcp2's write functions from here.
enum QUICCallbacks {
    @inline(__always)
    static func core(_ p: UnsafeMutableRawPointer?) -> QUICConnectionCore {
        Unmanaged<QUICConnectionCore>.fromOpaque(p!).takeUnretainedValue()
    }

    @inline(__always)
    static func stream(_ p: UnsafeMutableRawPointer?) -> QUICStreamCore? {
        guard let p else { return nil }
        return Unmanaged<QUICStreamCore>.fromOpaque(p).takeUnretainedValue()
    }

    static func table(isClient: Bool) -> ngtcp2_callbacks {
        var cb = ngtcp2_callbacks()
        setCrypto(&cb, isClient: isClient)
        setConnection(&cb)
        setStreams(&cb)
        setFlowControl(&cb)
        return cb
    }

    /// ngtcp2's own GnuTLS glue.
    private static func setCrypto(_ cb: inout ngtcp2_callbacks, isClient: Bool) {
        if isClient {
            cb.client_initial = ngtcp2_crypto_client_initial_cb
            cb.recv_retry = ngtcp2_crypto_recv_retry_cb
        } else {
            cb.recv_client_initial = ngtcp2_crypto_recv_client_initial_cb
        }
        cb.recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb
        cb.encrypt = ngtcp2_crypto_encrypt_cb
        cb.decrypt = ngtcp2_crypto_decrypt_cb
        cb.hp_mask = ngtcp2_crypto_hp_mask_cb
        cb.update_key = ngtcp2_crypto_update_key_cb
        cb.delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb
        cb.delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb
        cb.get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb
        cb.version_negotiation = ngtcp2_crypto_version_negotiation_cb
    }

    /// Connection IDs, stateless resets, the handshake and its keys.
    private static func setConnection(_ cb: inout ngtcp2_callbacks) {
        cb.rand = { dest, len, _ in fillRandom(dest!, len) }
        cb.get_new_connection_id = { _, cid, token, cidlen, user in
            let core = QUICCallbacks.core(user)
            fillRandom(UnsafeMutableRawPointer(mutating: withUnsafeMutableBytes(of: &cid!.pointee.data) { $0.baseAddress! }), cidlen)
            cid!.pointee.datalen = cidlen
            guard let cid, let token, core.endpoint.makeStatelessResetToken(for: cid, into: token) else {
                return NGTCP2_ERR_CALLBACK_FAILURE
            }
            core.endpoint.route(ConnectionID(cid.pointee), to: core)
            return 0
        }
        cb.remove_connection_id = { _, cid, user in
            QUICCallbacks.core(user).endpoint.unroute(ConnectionID(cid!.pointee), from: QUICCallbacks.core(user))
            return 0
        }
        cb.recv_stateless_reset = { _, _, user in
            QUICCallbacks.core(user).receivedStatelessReset = true
            return 0
        }
        cb.handshake_completed = { _, user in
            QUICCallbacks.core(user).handshakeCompleted() ? 0 : NGTCP2_ERR_CALLBACK_FAILURE
        }
        cb.recv_rx_key = { _, level, user in
            // A server gets 0-RTT keys only when TLS accepted early data.
            let core = QUICCallbacks.core(user)
            if level == NGTCP2_CRYPTO_LEVEL_EARLY { core.earlyKeysInstalled = true }
            // A server knows the ALPN once it has keys past Initial, before
            // any stream data can arrive.
            if level == NGTCP2_CRYPTO_LEVEL_EARLY || level == NGTCP2_CRYPTO_LEVEL_HANDSHAKE {
                return core.applicationProtocolKnown() ? 0 : NGTCP2_ERR_CALLBACK_FAILURE
            }
            return 0
        }
        cb.recv_tx_key = { _, level, user in
            // A client gets 0-RTT keys when TLS offers early data.
            if level == NGTCP2_CRYPTO_LEVEL_EARLY { QUICCallbacks.core(user).earlyKeysInstalled = true }
            return 0
        }
        cb.handshake_confirmed = { _, user in
            QUICCallbacks.core(user).handshakeConfirmed()
            return 0
        }
    }

    /// Stream data in, acknowledgments, closes and resets: to the
    /// application session when one took the connection over, else to the
    /// stream.
    private static func setStreams(_ cb: inout ngtcp2_callbacks) {
        cb.stream_open = { _, id, user in
            let core = QUICCallbacks.core(user)
            // An application session (HTTP/3) learns of its streams from
            // their data. memreplica uses no unidirectional stream: one a
            // peer opens anyway (allowed when an application asks for them)
            // is left without a reader and without credit beyond its first
            // window.
            if core.application != nil || id & 0x2 != 0 { return 0 }
            core.streamOpenedByPeer(id)
            return 0
        }
        cb.recv_stream_data = { _, flags, id, _, data, len, user, streamUser in
            if let app = QUICCallbacks.core(user).application {
                return app.receive(stream: id, data, len, fin: flags & UInt32(NGTCP2_STREAM_DATA_FLAG_FIN) != 0)
            }
            guard let stream = QUICCallbacks.stream(streamUser) else { return 0 }
            let fin = flags & UInt32(NGTCP2_STREAM_DATA_FLAG_FIN) != 0
            let early = flags & UInt32(NGTCP2_STREAM_DATA_FLAG_EARLY) != 0
            stream.deliver(UnsafeRawBufferPointer(start: data, count: len), fin: fin, early: early)
            return 0
        }
        cb.acked_stream_data_offset = { _, id, offset, len, user, streamUser in
            if let app = QUICCallbacks.core(user).application { return app.acknowledged(stream: id, len) }
            guard let stream = QUICCallbacks.stream(streamUser) else { return 0 }
            stream.acknowledged(upTo: offset + len)
            return 0
        }
        cb.stream_close = { _, flags, id, code, user, streamUser in
            let hasCode = flags & UInt32(NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) != 0
            if let app = QUICCallbacks.core(user).application { return app.streamClosed(id, appErrorCode: hasCode ? code : nil) }
            guard let stream = QUICCallbacks.stream(streamUser) else { return 0 }
            QUICCallbacks.core(user).streamClosed(stream, appErrorCode: hasCode ? code : nil)
            return 0
        }
        cb.stream_reset = { _, id, _, code, user, streamUser in
            if let app = QUICCallbacks.core(user).application { app.streamAborted(id); return 0 }
            QUICCallbacks.stream(streamUser)?.failReceive(.streamReset(errorCode: code))
            return 0
        }
        cb.stream_stop_sending = { _, id, code, user, streamUser in
            if let app = QUICCallbacks.core(user).application { app.streamAborted(id); return 0 }
            QUICCallbacks.stream(streamUser)?.failSend(.streamReset(errorCode: code))
            return 0
        }
    }

    /// Credit the peer grants: streams to open, bytes to send.
    private static func setFlowControl(_ cb: inout ngtcp2_callbacks) {
        cb.extend_max_local_streams_bidi = { _, _, user in
            QUICCallbacks.core(user).streamCreditAvailable()
            return 0
        }
        cb.extend_max_remote_streams_bidi = { _, max, user in
            QUICCallbacks.core(user).application?.peerStreamLimitRaised(to: max)
            return 0
        }
        cb.extend_max_stream_data = { _, id, _, user, streamUser in
            if let app = QUICCallbacks.core(user).application {
                app.flowCreditAvailable(id)
                QUICCallbacks.core(user).endpoint.needsWrite(QUICCallbacks.core(user))
                return 0
            }
            guard let stream = QUICCallbacks.stream(streamUser), stream.flowBlocked else { return 0 }
            stream.flowBlocked = false
            QUICCallbacks.core(user).schedule(stream)
            return 0
        }
    }
}
