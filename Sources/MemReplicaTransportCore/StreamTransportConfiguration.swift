/// A transport's configuration, around the settings every transport
/// shares (`QUICConfiguration`, `TCPConfiguration`).
package protocol StreamTransportConfiguration {
    var settings: StreamTransportSettings { get set }
}

extension StreamTransportConfiguration {
    /// The windows this configuration grants, clamped to the memory budget.
    package func clampedToBudget() -> Self {
        var c = self
        c.settings = settings.clampedToBudget()
        return c
    }
}
