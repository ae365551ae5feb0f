import MemReplicaSystem
import Dispatch
import Foundation
import SystemPackage

/// Asks a running peer over its control socket: one request, one answer,
/// bounded by `timeout`.
public struct ControlClient: Sendable {
    public let path: String
    public var timeout: Duration
    /// Room for a status report with thousands of peers and regions.
    public static let responseLimit = 16 << 20

    public init(path: String, timeout: Duration = .seconds(5)) {
        self.path = path
        self.timeout = timeout
    }

    public func send(_ request: ControlRequest) async throws -> ControlResponse {
        // The socket calls block; keep them off the concurrency pool, whose
        // few threads may be the very ones the answering peer needs (when it
        // runs in this process, as in tests).
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try exchange(request) })
            }
        }
    }

    public func status() async throws -> StatusReport {
        switch try await send(.status) {
        case .status(let report): return report
        case .error(let message): throw ControlError.refused(message)
        default: throw ControlError.malformed("the peer answered 'status' with another report")
        }
    }

    /// Compares replica `region` with its primary (the peer's answer may
    /// take as long as hashing both copies: give a timeout to match).
    public func verify(_ region: String) async throws -> VerifyReport {
        switch try await send(.verify(region)) {
        case .verify(let report): return report
        case .error(let message): throw ControlError.refused(message)
        default: throw ControlError.malformed("the peer answered 'verify' with another report")
        }
    }

    /// Runs a migration on the peer (its answer comes when the migration
    /// ended: give a timeout above the migration's own).
    public func migrate(_ request: MigrationRequest) async throws -> MigrationReport {
        switch try await send(.migrate(request)) {
        case .migrate(let report): return report
        case .error(let message): throw ControlError.refused(message)
        default: throw ControlError.malformed("the peer answered 'migrate' with another report")
        }
    }

    public func stats() async throws -> StatsReport {
        switch try await send(.stats) {
        case .stats(let report): return report
        case .error(let message): throw ControlError.refused(message)
        default: throw ControlError.malformed("the peer answered 'stats' with another report")
        }
    }

    private func exchange(_ request: ControlRequest) throws -> ControlResponse {
        let socket: UnixSocket
        do {
            socket = try UnixSocket.connect(to: path)
        } catch ControlError.system(call: "connect", _, let e) where e == .noSuchFileOrDirectory || e == .connectionRefused {
            throw ControlError.noPeerRunning(path: path, stale: e == .connectionRefused)
        }
        defer { socket.close() }
        let deadline = ContinuousClock.now + timeout
        var line = Array(try JSONEncoder().encode(request))
        line.append(UInt8(ascii: "\n"))
        try socket.send(line, deadline: deadline)
        let answer = try socket.readLine(limit: Self.responseLimit, deadline: deadline)
        guard !answer.isEmpty else { throw ControlError.malformed("the peer closed the control connection without answering") }
        do {
            return try StatusReport.makeDecoder().decode(ControlResponse.self, from: Data(answer))
        } catch {
            throw ControlError.malformed("unreadable answer from the peer (is it the same memreplica version?)")
        }
    }
}
