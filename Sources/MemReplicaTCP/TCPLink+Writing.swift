import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import COpenSSL
import DequeModule
#if canImport(Glibc)
import Glibc
#endif

/// A link's sending side: records queued for its streams and controls,
/// framed into TLS and flushed to the socket as it takes them.
extension TCPLink {
    func schedule(_ stream: TCPStreamCore) {
        guard !stream.scheduled, !stream.removed, stream.hasWork, state != .draining, state != .closed else { return }
        sendStreams.schedule(stream)
        if state == .open { endpoint.needsWrite(self) }
    }

    /// Only the framing order changes: what is already in the kernel's send
    /// buffer goes first regardless (TCP's head-of-line cost).
    func makeUrgent(_ stream: TCPStreamCore) { sendStreams.makeUrgent(stream) }

    func queueControl(_ type: MuxRecordType, stream: Int64 = 0, value: UInt64) {
        var payload: [UInt8] = []
        VarInt.encode(value, into: &payload)
        queueRecord(type, stream: stream, payload: payload)
    }

    func queueControl(_ type: MuxRecordType, stream: Int64 = 0, payload: [UInt8]) {
        queueRecord(type, stream: stream, payload: payload)
    }

    func queueRecord(_ type: MuxRecordType, stream: Int64 = 0, payload: [UInt8]) {
        guard state != .draining, state != .closed else { return }
        MuxRecord.append(type, stream: stream, payload: payload, to: &control)
        if control.count > MuxLimits.maxControlBacklog {
            // The peer keeps asking (PINGs, stops) and never reads our answers.
            refuse(MuxViolation("more than \(MuxLimits.maxControlBacklog) bytes of control records unsent: the peer does not read"))
            return
        }
        if state == .open || state == .awaitingSettings { endpoint.needsWrite(self) }
    }

    /// Writes staged bytes until the socket is full, the budget is spent or
    /// nothing is left.
    func flush() {
        guard state == .awaitingSettings || state == .open || state == .draining else { return }
        var budget = Self.flushBudget
        while budget > 0 {
            if stagingStart == stagingEnd {
                refill()
                if stagingEnd == 0 { break }
            }
            let staged = staging!
            ERR_clear_error()
            let n = SSL_write(ssl, staged.baseAddress! + stagingStart, Int32(stagingEnd - stagingStart))
            if n > 0 {
                stagingStart += Int(n)
                budget -= Int(n)
                continue
            }
            switch SSL_get_error(ssl, n) {
            case SSL_ERROR_WANT_WRITE:
                setInterest(out: true)
                return
            case SSL_ERROR_WANT_READ:
                return
            case SSL_ERROR_SYSCALL:
                if state == .draining { closeNow() } else { fail(.connectionLost(detail: String(cString: strerror(errno)))) }
                return
            default:
                fail(OpenSSLFailure.error(of: ssl, during: "writing", offered: endpoint.configuration.applicationProtocols))
                return
            }
        }
        if budget <= 0 {
            endpoint.needsWrite(self)
            return
        }
        setInterest(out: false)
        if state == .draining && !shutdownSent { sendShutdown() }
    }

    /// Frames control records, then one DATA record per stream per turn, in
    /// `SendScheduler`'s order (urgent first, bulk keeping a share).
    private func refill() {
        stagingStart = 0
        stagingEnd = 0
        guard !control.isEmpty || (state == .open && !sendStreams.isEmpty) else { return }
        if staging == nil { staging = .allocate(byteCount: Self.stagingSize, alignment: 16) }
        let out = staging!
        var used = 0
        if !control.isEmpty {
            let n = min(control.count, out.count)
            control.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
            control.removeFirst(n)
            used = n
        }
        guard state == .open, let connection else {
            stagingEnd = used
            return
        }
        let maxRecord = endpoint.configuration.maxDataRecord
        while out.count - used > MuxLimits.maxHeader, let stream = sendStreams.next(ready: { !$0.removed }) {
            let credit = connection.creditLeft(for: stream)
            let (written, data) = stream.frame(into: UnsafeMutableRawBufferPointer(rebasing: out[used...]),
                                               connectionCredit: credit, maxRecord: maxRecord)
            used += written
            connection.sent(data)
            if written > 0 { sendStreams.tookTurn(stream) }
            if stream.sendDone {
                sendStreams.remove(stream)
                connection.streamMayBeDone(stream)
            } else if stream.hasWork {
                if stream.queuedBytes > 0 && connection.creditLeft(for: stream) == 0 {
                    sendStreams.remove(stream)
                    connection.waitForCredit(stream)
                } else if written > 0 {
                    sendStreams.rotate(stream)
                } else {
                    // No room left in this staging round; it keeps its turn.
                    break
                }
            } else {
                sendStreams.remove(stream)
            }
        }
        stagingEnd = used
    }
}
