@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore

/// Accepts every connection and echoes each of its streams; keeps the
/// connections so a test can look at how they ended.
final class EchoServer: Sendable {
    private let accepted = Locked<[any TransportConnection]>([])
    private let task: Task<Void, Never>

    init(_ transport: any Transport) {
        let accepted = self.accepted
        task = Task {
            await withDiscardingTaskGroup { group in
                while let conn = await transport.accept() {
                    accepted.withLock { $0.append(conn) }
                    group.addTask {
                        while let s = try? await conn.acceptStream() {
                            guard let bytes = try? await s.readAll(limit: 1 << 20) else { continue }
                            try? await s.write(bytes)
                            try? await s.finish()
                        }
                    }
                }
            }
        }
    }

    /// The `index`th connection accepted, waiting up to 5 s for it.
    func connection(_ index: Int) async throws -> any TransportConnection {
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            if let c = accepted.withLock({ $0.count > index ? $0[index] : nil }) { return c }
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: "accepting connection \(index)", seconds: 5) }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Waits for the accept loop to end (close the transport first).
    func stop() async { await task.value }
}
