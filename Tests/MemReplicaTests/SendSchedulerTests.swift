@testable import MemReplicaTransportCore
import Testing

/// The scheduler both transports' writers use (QUIC per packet, TCP per
/// DATA record): urgent streams first, yet a waiting bulk stream keeps
/// every fifth turn. TCP's writer had no such rule before the two shared it.
@Suite("SendScheduler: urgent first, bulk keeps a share")
struct SendSchedulerTests {
    final class FakeStream: SendScheduled {
        let name: String
        var urgent = false
        var scheduled = false
        init(_ name: String, urgent: Bool = false) {
            self.name = name
            self.urgent = urgent
        }
    }

    /// Runs `turns` turns with every stream always ready, as a writer does.
    private func turns(_ n: Int, _ scheduler: inout SendScheduler<FakeStream>) -> [String] {
        (0..<n).map { _ in
            let s = scheduler.next(ready: { _ in true })!
            scheduler.tookTurn(s)
            scheduler.rotate(s)
            return s.name
        }
    }

    @Test("a steady urgent stream leaves every fifth turn to a waiting bulk stream")
    func bulkShare() {
        var scheduler = SendScheduler<FakeStream>()
        scheduler.schedule(FakeStream("bulk"))
        scheduler.schedule(FakeStream("read", urgent: true))
        let order = turns(20, &scheduler)
        #expect(order.filter { $0 == "bulk" }.count == 4)
        #expect(Array(order.prefix(5)) == ["read", "read", "read", "read", "bulk"])
    }

    @Test("an urgent stream goes ahead of queued bulk streams, behind queued urgent ones")
    func urgentOrder() {
        var scheduler = SendScheduler<FakeStream>()
        for name in ["b1", "b2"] { scheduler.schedule(FakeStream(name)) }
        scheduler.schedule(FakeStream("u1", urgent: true))
        scheduler.schedule(FakeStream("u2", urgent: true))
        #expect(scheduler.next(ready: { _ in true })?.name == "u1")
        #expect(scheduler.next(ready: { $0.name != "u1" && $0.name != "u2" })?.name == "b1")
    }

    @Test("streams that are not ready leave the queue")
    func notReadyLeave() {
        var scheduler = SendScheduler<FakeStream>()
        let idle = FakeStream("idle")
        scheduler.schedule(idle)
        #expect(scheduler.next(ready: { _ in false }) == nil)
        #expect(!idle.scheduled)
        #expect(scheduler.isEmpty)
    }
}
