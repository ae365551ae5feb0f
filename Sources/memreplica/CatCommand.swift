import MemReplica
import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct CatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cat",
        abstract: "Write a local region's bytes (primary or replica) to stdout.",
        discussion: """
            Reads through a mapping of the region. On a lazy replica the mapping is attached to the \
            running peer, which pulls every missing chunk the read touches, so the bytes are the \
            primary's, never holes.
            """)

    @Argument(help: "The region's name, as the running peer knows it.")
    var region: String

    @Option(help: "First byte to write (default 0).")
    var offset: Int = 0

    @Option(help: "Bytes to write (default: to the end of the region).")
    var length: Int?

    @Option(help: ArgumentHelp("The peer's control socket (default: STATE_DIR/control.sock).", valueName: "path"))
    var control: String?

    @Flag(help: ArgumentHelp(
        "Print a replica's bytes even while it is not synced with its primary (they may be stale or incomplete)."))
    var allowStale = false

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard offset >= 0 else { throw ValidationError("--offset must not be negative") }
        if let length, length < 0 { throw ValidationError("--length must not be negative") }
    }

    func run() async throws {
        let path = control ?? state.directory.controlSocketPath
        let (region, offset, length, allowStale) = (self.region, self.offset, self.length, self.allowStale)
        // Touching a lazy replica's mapping may block until the chunk
        // arrives: read on a thread of our own, never the concurrency pool.
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                continuation.resume(with: Result {
                    try Self.copy(region: region, controlPath: path, offset: offset, length: length, allowStale: allowStale)
                })
            }
            thread.name = "cat \(region)"
            thread.start()
        }
    }

    private static func copy(region: String, controlPath: String, offset: Int, length: Int?, allowStale: Bool) throws {
        let attached = try AttachedRegion(controlPath: controlPath, region: region)
        defer { attached.detach() }
        // An eager replica's file holds whatever last arrived: current only
        // while the replica is synced (a lazy one pulls what it lacks).
        if attached.answer.role == "replica", !attached.answer.lazy, attached.answer.synced == false, !allowStale {
            throw CatFailure(message: "replica '\(region)' is not synced with its primary: its bytes may be stale or "
                             + "incomplete (--allow-stale prints them anyway)")
        }
        let size = attached.bytes.count
        guard offset <= size else {
            throw ValidationError("--offset \(offset) is past the end of region '\(region)' (\(size) bytes)")
        }
        let count = length ?? (size - offset)
        guard count <= size - offset else {
            throw ValidationError("--offset \(offset) --length \(count) runs past the end of region '\(region)' (\(size) bytes)")
        }
        // Copy first, then write: the copy takes any faults in user mode,
        // and a block the peer could not serve is never written out.
        var done = 0
        while done < count {
            let n = min(1 << 20, count - done)
            let buffer: [UInt8]
            do {
                buffer = try attached.read(offset: offset + done, count: n)
            } catch {
                throw CatFailure(message: "\(error)")
            }
            try buffer.withUnsafeBytes { b in
                var written = 0
                while written < n {
                    let w = write(STDOUT_FILENO, b.baseAddress! + written, n - written)
                    if w < 0 {
                        if errno == EINTR { continue }
                        throw CatFailure(message: "cannot write to stdout: \(String(cString: strerror(errno)))")
                    }
                    written += w
                }
            }
            done += n
        }
        if let failure = attached.failure { throw CatFailure(message: failure) }
    }
}

struct CatFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
