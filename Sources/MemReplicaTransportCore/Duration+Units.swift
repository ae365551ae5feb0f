/// `Duration` in the units reports, clocks and histograms use. One place,
/// so every layer rounds and saturates the same way.
extension Duration {
    /// Seconds as a Double, for printing and JSON.
    public var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) / 1e18
    }

    public var milliseconds: Double { seconds * 1000 }

    /// Whole nanoseconds, saturating: a negative duration gives 0, one past
    /// `UInt64.max` nanoseconds (about 584 years) gives `.max`.
    public var saturatingNanoseconds: UInt64 {
        let (s, atto) = components
        if s < 0 || (s == 0 && atto < 0) { return 0 }
        let (product, overflow) = UInt64(s).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (sum, carry) = product.addingReportingOverflow(UInt64(atto / 1_000_000_000))
        return carry ? .max : sum
    }
}
