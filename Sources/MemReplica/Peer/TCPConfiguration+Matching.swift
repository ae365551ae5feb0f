import MemReplicaQUIC
import MemReplicaTCP

extension TCPConfiguration {
    /// The same windows, buffers, timeouts, ALPN, congestion controller
    /// family and network namespace as a QUIC configuration.
    public init(matching quic: QUICConfiguration, connectionPerStream: Bool = false) {
        self.init()
        settings = quic.settings
        socketBufferSize = quic.socketBufferSize
        congestionControl = quic.congestionControl.kernelName
        self.connectionPerStream = connectionPerStream
    }
}
