import MemReplicaTransportCore
/// Which peers may see a region (mirror it, read it, learn its name): the
/// certificate common names listed, or every peer the CA signed (`any`).
///
/// The same rule applies on every path that reveals a region's bytes or
/// name (SUBSCRIBE, reads and verify streams, CATALOG, and over HTTP/3
/// `/regions`, `/stats` and chunks), on primaries and replicas alike. A
/// replica learns its primary's list from the CATALOG and may narrow it
/// with one of its own, never widen it. A certificate without exactly one
/// CN (`PeerIdentity.commonName` nil) matches no list.
public struct AllowList: Sendable, Equatable, CustomStringConvertible {
    /// nil: any peer the CA signed.
    public let names: Set<String>?

    public static let any = AllowList(names: nil)
    /// Nobody (a replica that has not learnt its primary's rule yet).
    public static let nobody = AllowList(names: [])

    public init(names: Set<String>?) { self.names = names }

    public func permits(_ peer: PeerIdentity) -> Bool {
        guard let names else { return true }
        guard let name = peer.commonName else { return false }
        return names.contains(name)
    }

    /// Both rules at once: a name must pass this one and `other`.
    public func narrowed(by other: AllowList) -> AllowList {
        switch (names, other.names) {
        case (nil, _): return other
        case (_, nil): return self
        case (let a?, let b?): return AllowList(names: a.intersection(b))
        }
    }

    /// As CATALOG carries it: sorted names, nil for any.
    public var catalogForm: [String]? { names.map { $0.sorted() } }

    public var description: String {
        names.map { $0.isEmpty ? "nobody" : $0.sorted().joined(separator: "+") } ?? "any peer"
    }
}
