import QuicShim
import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
#if canImport(Glibc)
import Glibc
#endif

/// Datagrams out: GSO batches to the socket, and what the kernel would not
/// take yet held until it can (every connection waits on it meanwhile).
extension QUICEndpoint {
    /// Sends datagrams; false when the kernel buffer is full (the rest is
    /// kept and sent first once the socket drains).
    @discardableResult
    package func sendDatagrams(_ data: UnsafeRawBufferPointer, segmentSize: Int, for core: QUICConnectionCore) -> Bool {
        guard data.count > 0 else { return true }
        if pendingSend != nil { return false }
        switch socket.send(data, segmentSize: segmentSize, to: core.remote) {
        case .sent:
            return true
        case .wouldBlock:
            pendingSend = (Array(data), segmentSize, core.remote)
            poller.modify(socket.fd.rawValue, token: Self.socketToken, events: EPOLLIN.rawValue | EPOLLOUT.rawValue)
            return false
        case .failed(let e):
            if e == EIO && segmentSize > 0 {
                // GSO refused (e.g. a device without it): send one by one.
                var offset = 0
                while offset < data.count {
                    let len = min(segmentSize, data.count - offset)
                    _ = socket.send(UnsafeRawBufferPointer(rebasing: data[offset..<offset + len]), segmentSize: 0, to: core.remote)
                    offset += len
                }
                return true
            }
            if e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH {
                if case .handshaking = core.state {
                    core.callbackError = .peerUnreachable(address: core.remoteAddress.description,
                                                          detail: String(cString: strerror(e)))
                }
            } else {
                logger.debug("send failed: \(String(cString: strerror(e)))")
            }
            return true
        }
    }

    /// Sends one datagram that belongs to no connection (a stateless
    /// reset); dropped when the kernel buffer is full, as the network might.
    func sendWithoutConnection(_ data: UnsafeRawBufferPointer, to address: SocketAddressStorage) {
        guard pendingSend == nil else { return }
        _ = socket.send(data, segmentSize: 0, to: address)
    }

    func flushPendingSend() {
        guard let p = pendingSend else { return }
        let result = p.bytes.withUnsafeBytes { socket.send($0, segmentSize: p.segment, to: p.to) }
        if case .wouldBlock = result { return }
        pendingSend = nil
        poller.modify(socket.fd.rawValue, token: Self.socketToken, events: EPOLLIN.rawValue)
    }
}
