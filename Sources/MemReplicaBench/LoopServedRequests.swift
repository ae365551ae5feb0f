import MemReplicaQUIC
import MemReplicaSystem
import MemReplicaTransportCore
import Foundation

/// Request/response over QUIC the way memreplica's own requests travel (a
/// post-copy fault's READ and DATA): both loops answer in the turn the
/// bytes arrive (`LoopStreamReader`), and the asking thread waits on the
/// answer directly, as a faulting thread does. The task-based rows of
/// `bench transport` cross threads four times per exchange (loop → task →
/// loop on each side); this path crosses twice, as blocking TLS over TCP
/// does, so the two compare the protocols rather than the threading.
struct LoopServedRequests {
    let request: Int
    let response: Int

    /// Server side: answers every `request` bytes with `response` bytes,
    /// then polls a moment for the next request, as a primary does.
    private final class Responder: LoopStreamReader, @unchecked Sendable {
        let request: Int
        let reply: [UInt8]
        var pending = 0
        init(request: Int, response: Int) {
            self.request = request
            reply = [UInt8](repeating: 0x33, count: response)
        }
        func streamReadable(_ stream: any LoopStream) {
            while let bytes = stream.takeOnLoop(maxLength: 1 << 16) {
                pending += bytes.count
                while pending >= request {
                    pending -= request
                    do {
                        try stream.sendOnLoop(reply.withUnsafeBytes(OwnedBytes.copy))
                    } catch {
                        stream.endLoopReading(error)
                        return
                    }
                    stream.loop.keepPollingForRequests()
                }
            }
            if stream.receivedAllOnLoop { stream.endLoopReading(nil) }
        }
    }

    /// Client side: signals the waiting thread once a whole answer is in.
    private final class Collector: LoopStreamReader, @unchecked Sendable {
        let response: Int
        let answered = DispatchSemaphore(value: 0)
        var pending = 0
        init(response: Int) { self.response = response }
        func streamReadable(_ stream: any LoopStream) {
            while let bytes = stream.takeOnLoop(maxLength: 1 << 16) {
                pending += bytes.count
                while pending >= response {
                    pending -= response
                    stream.loop.answersArrived()
                    answered.signal()
                }
            }
            if stream.receivedAllOnLoop { stream.endLoopReading(nil) }
        }
    }

    /// Round trips in nanoseconds, after `warmup` untimed ones.
    func measure(server: QUICEndpoint, client: QUICEndpoint, iterations: Int, warmup: Int) async throws -> [UInt64] {
        let request = self.request, response = self.response
        let serving = Task {
            guard let conn = await server.accept(), let stream = try? await conn.acceptStream(),
                  let served = stream as? any LoopServedStream else { return }
            try? await served.readOnLoop(Responder(request: request, response: response))
            try? await stream.finish()
        }
        defer { serving.cancel() }
        let conn = try await client.connect(to: PeerAddress(host: "127.0.0.1", port: server.localAddress.port))
        defer { Task { await conn.close(errorCode: 0, reason: "") } }
        guard let stream = try await conn.openStream() as? any LoopServedStream else {
            throw TransportError.system(call: "openStream", errno: EPROTONOSUPPORT)
        }
        let collector = Collector(response: response)
        let reading = Task { try await stream.readOnLoop(collector) }
        let onLoop = stream.onLoop
        let req = [UInt8](repeating: 0x11, count: request)
        let samples: [UInt64] = try await withCheckedThrowingContinuation { done in
            let thread = Thread {
                var samples: [UInt64] = []
                samples.reserveCapacity(iterations)
                for i in 0..<(iterations + warmup) {
                    let t0 = monotonicNanoseconds()
                    onLoop.loop.post {
                        _ = try? onLoop.sendOnLoop(req.withUnsafeBytes(OwnedBytes.copy))
                        onLoop.loop.pollForAnswers()
                    }
                    guard collector.answered.wait(timeout: .now() + 10) == .success else {
                        done.resume(throwing: TransportError.peerStalled(seconds: 10))
                        return
                    }
                    if i >= warmup { samples.append(monotonicNanoseconds() - t0) }
                }
                done.resume(returning: samples)
            }
            thread.name = "bench loop requests"
            thread.start()
        }
        try await stream.finish()
        _ = try? await reading.value
        return samples
    }
}
