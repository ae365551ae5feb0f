import MemReplicaTransportCore
import Testing

/// When bulk streams are held to a short bottleneck queue (`BulkQueueGate`).
@Suite("Bulk queue gate")
struct BulkQueueGateTests {
    private let ms: UInt64 = 1_000_000
    /// 1 Gbit/s in bytes per ns, and a 50 ms path: 6.25 MB in one RTT.
    private let rate = 0.125
    private let rtt: UInt64 = 50_000_000

    @Test("with no urgent stream sending, bulk is never held")
    func idle() {
        var gate = BulkQueueGate(allowance: .microseconds(2500))
        gate.update(now: 10 * ms, bytesInFlight: 100 << 20, pacingRate: rate, minRTT: rtt)
        #expect(!gate.isHolding)
        #expect(gate.bulkMayWrite)
    }

    @Test("while urgent streams send, bulk writes up to bandwidth × (min RTT + allowance) in flight, and no further")
    func holds() {
        var gate = BulkQueueGate(allowance: .microseconds(2500))
        gate.urgentSent(now: 5 * ms)
        // 0.125 B/ns × 52.5 ms = 6 562 500 bytes.
        gate.update(now: 10 * ms, bytesInFlight: 6_562_000, pacingRate: rate, minRTT: rtt)
        #expect(gate.isHolding)
        #expect(gate.bulkMayWrite)
        gate.sent(499)
        #expect(gate.bulkMayWrite)
        gate.sent(1)
        #expect(!gate.bulkMayWrite)
        // The next round starts from the controller's count again: ACKs came.
        gate.update(now: 11 * ms, bytesInFlight: 6_000_000, pacingRate: rate, minRTT: rtt)
        #expect(gate.bulkMayWrite)
    }

    @Test("the gate lets go once urgent streams have been quiet for the activity window")
    func expires() {
        var gate = BulkQueueGate(allowance: .microseconds(2500), urgentActivity: .seconds(1))
        gate.urgentSent(now: 0)
        gate.update(now: 1000 * ms, bytesInFlight: 8 << 20, pacingRate: rate, minRTT: rtt)
        #expect(!gate.bulkMayWrite)
        gate.update(now: 1001 * ms, bytesInFlight: 8 << 20, pacingRate: rate, minRTT: rtt)
        #expect(gate.bulkMayWrite)
        #expect(!gate.isHolding)
    }

    @Test("without a bandwidth estimate (cubic, reno) or an RTT sample, bulk is not held")
    func noEstimate() {
        var gate = BulkQueueGate(allowance: .microseconds(2500))
        gate.urgentSent(now: 0)
        gate.update(now: ms, bytesInFlight: 64 << 20, pacingRate: 0, minRTT: rtt)
        #expect(gate.bulkMayWrite)
        gate.update(now: ms, bytesInFlight: 64 << 20, pacingRate: rate, minRTT: 0)
        #expect(gate.bulkMayWrite)
    }

    @Test("the allowance is the queue bulk may keep: a longer one lets more be in flight")
    func allowance() {
        var short = BulkQueueGate(allowance: .zero)
        var long = BulkQueueGate(allowance: .milliseconds(10))
        short.urgentSent(now: 0)
        long.urgentSent(now: 0)
        // 6.25 MB is one RTT's worth: full with no allowance, not with 10 ms (7.5 MB).
        short.update(now: ms, bytesInFlight: 6_250_000, pacingRate: rate, minRTT: rtt)
        long.update(now: ms, bytesInFlight: 6_250_000, pacingRate: rate, minRTT: rtt)
        #expect(!short.bulkMayWrite)
        #expect(long.bulkMayWrite)
        long.sent(1_250_000)
        #expect(!long.bulkMayWrite)
    }

    @Test("held time counts the rounds that ended with bulk at the limit, and only those")
    func heldTime() {
        var gate = BulkQueueGate(allowance: .microseconds(2500))
        gate.urgentSent(now: 0)
        gate.update(now: 10 * ms, bytesInFlight: 1_000_000, pacingRate: rate, minRTT: rtt)
        gate.update(now: 12 * ms, bytesInFlight: 7_000_000, pacingRate: rate, minRTT: rtt)
        #expect(gate.heldNanoseconds == 0)  // 10–12 ms ended under the limit
        gate.update(now: 15 * ms, bytesInFlight: 1_000_000, pacingRate: rate, minRTT: rtt)
        #expect(gate.heldNanoseconds == 3 * ms)  // 12–15 ms ended at it
        gate.sent(6_000_000)
        gate.update(now: 16 * ms, bytesInFlight: 1_000_000, pacingRate: rate, minRTT: rtt)
        #expect(gate.heldNanoseconds == 4 * ms)  // reached by this round's own sends
        // Not holding (urgent streams quiet): nothing counts, however full.
        gate.update(now: 2000 * ms, bytesInFlight: 64 << 20, pacingRate: rate, minRTT: rtt)
        gate.update(now: 2100 * ms, bytesInFlight: 64 << 20, pacingRate: rate, minRTT: rtt)
        #expect(gate.heldNanoseconds == 4 * ms)
    }
}
