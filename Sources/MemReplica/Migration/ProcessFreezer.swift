import Foundation
import SystemPackage

/// Stops and continues attached writer processes for a migration's freeze:
/// SIGSTOP, then `/proc/PID/stat` until the kernel reports each stopped.
/// A stopped process cannot store; a store that raced the signal happened
/// before the stop and is found by the final scan (docs/MIGRATION.md,
/// "Freezing writers").
enum ProcessFreezer {
    /// How long a process may take to reach the stopped state.
    static let stopLimit: Duration = .seconds(1)

    /// Stops every process in `pids`; returns those stopped (a process that
    /// exited meanwhile stores nothing and is left out). Throws, after
    /// continuing the ones it stopped, when one cannot be stopped.
    static func stop(_ pids: [Int32]) throws(MigrationError) -> [Int32] {
        var stopped: [Int32] = []
        // This process's own attachments (a library user attaching to its
        // own peer) pause through `MigrationFreeze`; SIGSTOP would stop the peer.
        for pid in Set(pids).sorted() where pid != getpid() {
            if kill(pid, SIGSTOP) == 0 {
                stopped.append(pid)
            } else if errno != ESRCH {
                let e = Errno(rawValue: errno)
                resume(stopped)
                throw MigrationError("cannot stop attached writer \(pid): \(e)")
            }
        }
        let deadline = ContinuousClock.now + stopLimit
        var waiting = stopped
        while !waiting.isEmpty {
            waiting.removeAll { state(of: $0).map { "TtZX".contains($0) } ?? true }
            if waiting.isEmpty { break }
            guard ContinuousClock.now < deadline else {
                resume(stopped)
                throw MigrationError("attached writers \(waiting) did not stop within \(stopLimit)")
            }
            usleep(100)
        }
        return stopped
    }

    static func resume(_ pids: [Int32]) {
        for pid in pids { kill(pid, SIGCONT) }
    }

    /// The state letter of `/proc/PID/stat` (nil once the process is gone).
    /// The name field may hold spaces and parentheses: the state follows
    /// the last ')'.
    static func state(of pid: Int32) -> Character? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let rest = text[text.index(after: close)...].drop { $0 == " " }
        return rest.first
    }
}
