import MemReplicaBench
import ArgumentParser

/// `bench sync --content random|zeros|python-heap|sqlite`.
extension BenchContent: ExpressibleByArgument {
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}
