/// How a peer sets QUIC's bulk queue gate (`QUICConfiguration.bulkQueueAllowance`):
/// config key `bulkQueue`, flag `--bulk-queue`, milliseconds or `off`.
public enum BulkQueueSetting: Equatable, Sendable {
    /// Bulk fills whatever the congestion controller allows.
    case off
    /// The queue bulk may keep at the bottleneck while answers are sent.
    case allowance(Duration)

    /// Allowances accepted, in ms: past a second the gate no longer
    /// shortens any queue worth the name.
    public static let millisecondsRange: ClosedRange<Double> = 0...1000

    /// "off", or milliseconds in `millisecondsRange` ("2.5").
    public init?(text: String) {
        if text == "off" { self = .off; return }
        guard let ms = Double(text), ms.isFinite, Self.millisecondsRange.contains(ms) else { return nil }
        self = .allowance(.microseconds(Int64((ms * 1000).rounded())))
    }

    /// The value for `QUICConfiguration.bulkQueueAllowance`.
    public var allowance: Duration? {
        if case .allowance(let d) = self { return d }
        return nil
    }

    static let explanation = "expected milliseconds from 0 to 1000, such as 2.5, or \"off\""
}
