import QuicShim

/// The QUIC and TLS libraries loaded at run time (what matters for bugs,
/// more than the headers built against).
public enum QUICLibraryVersions {
    public static var ngtcp2: String {
        ngtcp2_version(0).map { String(cString: $0.pointee.version_str) } ?? "unknown"
    }

    public static var gnuTLS: String {
        gnutls_check_version(nil).map { String(cString: $0) } ?? "unknown"
    }
}
