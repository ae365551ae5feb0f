@testable import MemReplica
@testable import MemReplicaSystem
import Foundation

/// Runs `body` on a thread of its own: a thread that touches a lazy
/// replica may sleep in a page fault, which must never happen on the
/// cooperative pool whose tasks serve those faults. Knows the thread's
/// kernel id, so a test can see it asleep in a fault instead of guessing
/// from a pause that nothing happened.
final class BlockingRead<T: Sendable>: @unchecked Sendable {
    private let result = Locked<T?>(nil)
    /// The thread's entry under /proc/self/task, once it runs.
    private let taskEntry = Locked<String?>(nil)

    init(_ body: @escaping @Sendable () -> T) {
        let thread = Thread { [result, taskEntry] in
            // "/proc/thread-self" links to "PID/task/TID" of the calling thread.
            let entry = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self")
            taskEntry.withLock { $0 = entry.map { "/proc/" + $0 } }
            let value = body()
            result.withLock { $0 = value }
        }
        thread.start()
    }

    var value: T? { result.withLock { $0 } }

    func wait(seconds: Double) async throws -> T {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            if let v = value { return v }
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: "a read of the lazy replica", seconds: seconds) }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Waits until the thread sleeps in a userfaultfd page fault (the
    /// kernel's wait channel for it is `handle_userfault`): its read is
    /// blocked on a missing page, and stays so until someone installs the
    /// page or wakes the range.
    func waitUntilAsleepInFault(seconds: Double = 10) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            if let entry = taskEntry.withLock({ $0 }),
               let channel = try? String(contentsOfFile: entry + "/wchan", encoding: .utf8),
               channel == "handle_userfault" {
                return
            }
            guard value == nil else { throw FaultWaitError.readFinished }
            guard ContinuousClock.now < deadline else { throw TimeoutError(what: "a read asleep in a page fault", seconds: seconds) }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    enum FaultWaitError: Error, CustomStringConvertible {
        case readFinished
        var description: String { "the read finished instead of waiting in a page fault" }
    }
}
