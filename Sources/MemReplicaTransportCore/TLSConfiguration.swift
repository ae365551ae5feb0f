/// Where this peer's certificates live. `certificate`/`key` may be nil only
/// in tests that check what happens to a client without a certificate.
public struct TLSConfiguration: Sendable, Hashable {
    public var caFile: String
    public var certificateFile: String?
    public var keyFile: String?

    public init(caFile: String, certificateFile: String?, keyFile: String?) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }
}
