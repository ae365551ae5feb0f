import MemReplica
import ArgumentParser

/// `--transport quic|tcp|tcp-per-region`.
extension TransportKind: ExpressibleByArgument {
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}
