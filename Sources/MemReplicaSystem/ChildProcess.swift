import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A child program started with posix_spawn and a clean signal mask.
/// Foundation's Process spawns from whichever thread runs the task, and
/// libdispatch's threads block most signals, so its children would inherit
/// a mask that ignores SIGTERM; this one resets mask and dispositions.
package final class ChildProcess: @unchecked Sendable {
    package let pid: pid_t
    private var status: Int32?

    /// `errorPath`: a file the child's stderr is written to (created or
    /// truncated by the child itself, so no descriptor of ours can leak
    /// into children other threads spawn meanwhile); stdout is discarded.
    package init(_ path: String, _ arguments: [String], quiet: Bool = true, errorPath: String? = nil) throws {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let errorPath {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        } else if quiet {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, path, &actions, &attr, argv, environ)
        guard rc == 0 else { throw SystemCallError(call: "posix_spawn \(path)", errno: rc) }
        pid = child
    }

    /// Sends `signal` to the child (e.g. SIGSTOP to freeze it in a test).
    package func signal(_ number: Int32) {
        kill(pid, number)
    }

    /// Waits for exit; returns the exit status (128+signal when killed).
    @discardableResult
    package func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        let code = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        status = code
        return code
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    package func terminate(grace: Duration = .seconds(2)) {
        guard status == nil else { return }
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        var raw: Int32 = 0
        while ContinuousClock.now < deadline {
            if waitpid(pid, &raw, WNOHANG) == pid {
                status = 128 + SIGTERM
                return
            }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        wait()
    }

    package var isRunning: Bool {
        guard status == nil else { return false }
        var raw: Int32 = 0
        if waitpid(pid, &raw, WNOHANG) == pid {
            status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            return false
        }
        return true
    }
}
