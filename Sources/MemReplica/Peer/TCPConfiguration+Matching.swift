import MemReplicaQUIC
import MemReplicaTCP

extension TCPConfiguration {
    /// The same windows, buffers, timeouts, ALPN, congestion controller
    /// family and network namespace as a QUIC configuration.
    public init(matching quic: QUICConfiguration, connectionPerStream: Bool = false) {
        self.init()
        applicationProtocols = quic.applicationProtocols
        streamReceiveWindow = quic.streamReceiveWindow
        connectionReceiveWindow = quic.connectionReceiveWindow
        streamSendBuffer = quic.streamSendBuffer
        maxConcurrentStreams = quic.maxConcurrentStreams
        livenessTimeout = quic.livenessTimeout
        keepAliveInterval = quic.keepAliveInterval
        handshakeTimeout = quic.handshakeTimeout
        socketBufferSize = quic.socketBufferSize
        acceptsConnections = quic.acceptsConnections
        congestionControl = quic.congestionControl.rawValue
        networkNamespace = quic.networkNamespace
        memoryBudget = quic.memoryBudget
        peerLimits = quic.peerLimits
        self.connectionPerStream = connectionPerStream
    }
}
