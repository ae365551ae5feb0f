/// Both directions of the emulated link.
public struct WANEmulatorStatistics: Sendable, Equatable, Codable, CustomStringConvertible {
    public var aToB: WANDirectionStatistics
    public var bToA: WANDirectionStatistics

    public init(aToB: WANDirectionStatistics = .init(), bToA: WANDirectionStatistics = .init()) {
        self.aToB = aToB
        self.bToA = bToA
    }

    public func since(_ earlier: WANEmulatorStatistics) -> WANEmulatorStatistics {
        WANEmulatorStatistics(aToB: aToB.since(earlier.aToB), bToA: bToA.since(earlier.bToA))
    }

    public var description: String {
        func line(_ name: String, _ d: WANDirectionStatistics) -> String {
            "\(name): passed \(d.packetsPassed) packets (\(d.bytesPassed) B), dropped by loss \(d.droppedByLoss), "
                + "by queue \(d.droppedByQueue), by capacity \(d.droppedByCapacity), "
                + "kernel tx_dropped \(d.kernelTxDropped.map(String.init) ?? "unknown")"
        }
        return line("A→B", aToB) + "\n" + line("B→A", bToA)
    }
}
