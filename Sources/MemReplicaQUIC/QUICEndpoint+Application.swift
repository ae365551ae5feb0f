/// Application protocols next to memreplica's own (HTTP/3's face uses this).
extension QUICEndpoint {
    /// From now on, inbound connections may choose `application`'s ALPN
    /// next to the configured protocols; such connections are handed to
    /// its sessions and never to `accept`.
    package func serve(_ application: any QUICApplication) async {
        await onLoop { [self] in applications[application.alpn] = application }
    }
}
