import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore

/// Loaded GnuTLS credentials: the trusted CA and this peer's certificate.
/// Immutable after init; sessions are created on the endpoint's loop.
final class TLSContext: @unchecked Sendable {
    let handle: OpaquePointer
    let configuration: TLSConfiguration
    /// Our own certificate's identity (empty subject when we have none).
    let localIdentity: PeerIdentity

    init(_ configuration: TLSConfiguration, replayWindow: Duration = .seconds(10)) throws {
        self.configuration = configuration
        var out: OpaquePointer?
        var err = [CChar](repeating: 0, count: 512)
        let rc = qs_tls_ctx_new(&out, configuration.caFile, configuration.certificateFile,
                                configuration.keyFile, &err, err.count)
        guard rc == 0, let ctx = out else {
            throw TransportError.tlsConfiguration(stringFromCBuffer(err))
        }
        handle = ctx
        qs_tls_ctx_set_replay_window(ctx, UInt32(clamping: Int64(replayWindow.milliseconds)))
        var der: UnsafePointer<UInt8>?
        var length = 0
        if qs_tls_ctx_certificate(ctx, &der, &length) == 0, let der {
            localIdentity = PeerIdentity(certificate: Array(UnsafeBufferPointer(start: der, count: length)))
        } else {
            localIdentity = .none
        }
    }

    deinit { qs_tls_ctx_free(handle) }
}
