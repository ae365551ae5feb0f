/// A run whose connection ended under it (for QUIC, typically ngtcp2
/// 0.12's limit of 1000 gaps in one stream's reassembly, `ERR_INTERNAL`,
/// on a long lossy path without lanes). It fails that run, not the matrix:
/// the report lists it and the medians leave it out.
public struct WANRunFailure: Codable, Sendable {
    public var scenario: WANScenario
    public var transport: String
    public var run: Int
    public var error: String
}
