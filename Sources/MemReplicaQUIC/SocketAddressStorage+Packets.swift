#if canImport(Glibc)
import Glibc
#endif
import MemReplicaTransportCore

extension SocketAddressStorage {
    /// `withSockaddr` for the per-packet paths (every send, every packet
    /// read): compiled in this module, so specialized. The generic one in
    /// MemReplicaTransportCore runs unspecialized from here (docs/ARCHITECTURE.md,
    /// "Generics across targets").
    @inline(__always)
    func withPacketSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        bytes.withUnsafeBytes { raw in body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count)) }
    }
}
