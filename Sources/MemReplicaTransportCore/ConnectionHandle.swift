import MemReplicaSystem

/// What a connection handle asks of its transport's connection core.
package protocol ConnectionHandleCore: AnyObject, Sendable {
    var peerIdentity: PeerIdentity { get }
    var remoteAddress: PeerAddress { get }
    func openStreamHandle() async throws -> StreamHandle
    func acceptStreamHandle() async throws -> StreamHandle
    func statisticsFromLoop() async -> ConnectionStatistics
    func waitClosed() async -> TransportError
    /// Closes on the loop thread with an application error code.
    func closeFromHandle(errorCode: UInt64, reason: String) async
}

/// A connection core that can serve a handle: it names the handle type of
/// its streams, and closes on request; the rest comes from
/// `StreamConnectionCore`.
package protocol HandledConnectionCore: StreamConnectionCore, ConnectionHandleCore {
    /// The handle user code gets for `stream` (`QUICStream`, `TCPStream`).
    func handle(for stream: Stream) -> StreamHandle
    /// Loop thread: closes with an application error code.
    func closeByApplication(errorCode: UInt64, reason: String)
}

extension HandledConnectionCore {
    package func openStreamHandle() async throws -> StreamHandle { handle(for: try await openStream()) }
    package func acceptStreamHandle() async throws -> StreamHandle { handle(for: try await acceptStream()) }

    package func closeFromHandle(errorCode: UInt64, reason: String) async {
        await onLoop { [self] in closeByApplication(errorCode: errorCode, reason: reason) }
    }
}

/// A connection as user code sees it, the same for every transport. Every
/// call is forwarded to the endpoint's loop thread; the handle itself
/// holds no mutable state. `QUICConnection` and `TCPConnection` add what
/// only their transport has (as `StreamHandle`, only they can subclass it).
open class ConnectionHandle: TransportConnection, @unchecked Sendable {
    package let connectionCore: any ConnectionHandleCore
    public let peerIdentity: PeerIdentity
    public let remoteAddress: PeerAddress

    package init(connectionCore: any ConnectionHandleCore) {
        self.connectionCore = connectionCore
        // Fixed once the handshake is done, which it is by now.
        peerIdentity = connectionCore.peerIdentity
        remoteAddress = connectionCore.remoteAddress
    }

    public func openStream() async throws -> any TransportStream { try await connectionCore.openStreamHandle() }
    public func acceptStream() async throws -> any TransportStream { try await connectionCore.acceptStreamHandle() }
    public func statistics() async -> ConnectionStatistics { await connectionCore.statisticsFromLoop() }
    public func waitClosed() async -> TransportError { await connectionCore.waitClosed() }

    public func close(errorCode: UInt64 = 0, reason: String = "") async {
        await connectionCore.closeFromHandle(errorCode: errorCode, reason: reason)
    }
}
