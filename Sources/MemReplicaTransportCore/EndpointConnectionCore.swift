/// A connection as its endpoint's loop holds it (`EndpointLoop`); handed
/// across threads to `accept`'s caller, hence Sendable.
package protocol EndpointConnectionCore: AnyObject, Sendable {
    /// Its line of `connectionSummaries()`; nil until established.
    var summary: ConnectionSummary? { get }
}
