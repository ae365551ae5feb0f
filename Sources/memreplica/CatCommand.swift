import ArgumentParser
import Foundation
import MemReplica
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

    @OptionGroup var state: StateOptions

    func validate() throws {
        guard offset >= 0 else { throw ValidationError("--offset must not be negative") }
        if let length, length < 0 { throw ValidationError("--length must not be negative") }
    }

    func run() async throws {
        let path = control ?? state.directory.controlSocketPath
        let (region, offset, length) = (self.region, self.offset, self.length)
        // Touching a lazy replica's mapping may block until the chunk
        // arrives: read on a thread of our own, never the concurrency pool.
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                continuation.resume(with: Result {
                    try Self.copy(region: region, controlPath: path, offset: offset, length: length)
                })
            }
            thread.name = "cat \(region)"
            thread.start()
        }
    }

    private static func copy(region: String, controlPath: String, offset: Int, length: Int?) throws {
        let attached = try AttachedRegion(controlPath: controlPath, region: region)
        defer { attached.detach() }
        let size = attached.bytes.count
        guard offset <= size else {
            throw ValidationError("--offset \(offset) is past the end of region '\(region)' (\(size) bytes)")
        }
        let count = length ?? (size - offset)
        guard count <= size - offset else {
            throw ValidationError("--offset \(offset) --length \(count) runs past the end of region '\(region)' (\(size) bytes)")
        }
        // Copy first, then write: the copy takes any faults in user mode.
        var buffer = [UInt8](repeating: 0, count: min(count, 1 << 20))
        var done = 0
        while done < count {
            let n = min(buffer.count, count - done)
            buffer.withUnsafeMutableBytes { b in
                b.baseAddress!.copyMemory(from: attached.bytes.baseAddress! + offset + done, byteCount: n)
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
        guard attached.sessionAlive else {
            throw CatFailure(message: "the peer ended the attachment while reading: the output may hold holes")
        }
    }
}

struct CatFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}
