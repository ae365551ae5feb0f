import MemReplica
import ArgumentParser
import Foundation

/// A writer process for tests and diagnostics: attaches to a primary as a
/// registered writer, stores an 8-byte value at each offset, detaches.
struct AttachWriteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach-write",
        abstract: "Attach to a primary region as a registered writer and store 8-byte values (for testing).",
        shouldDisplay: false)

    @Argument(help: "The region's name.")
    var region: String

    @Option(parsing: .upToNextOption, help: "Byte offsets to write at (8-byte aligned).")
    var offsets: [Int]

    @Option(help: "The value to store.")
    var value: UInt64 = 0x0DDB_A11C_AFE0_0001

    @Option(name: .customLong("hold-ms"), help: "Stay attached this long after writing.")
    var holdMilliseconds = 0

    @Option(help: "Rounds of writes, 1 ms apart; round N stores value + N at every offset (0: until killed).")
    var rounds = 1

    @Option(help: ArgumentHelp("The peer's control socket.", valueName: "path"))
    var control: String

    func validate() throws {
        guard rounds >= 0 else { throw ValidationError("--rounds must be 0 (until killed) or more") }
    }

    func run() throws {
        let attached = try AttachedRegion(controlPath: control, region: region, role: "primary", writable: true)
        defer { attached.detach() }
        for offset in offsets {
            guard offset >= 0, offset % 8 == 0, offset + 8 <= attached.bytes.count else {
                throw ValidationError("offset \(offset) is not an 8-byte aligned offset inside the region")
            }
        }
        print(attached.answer.tracking ?? "")
        var round = 0
        while rounds == 0 || round < rounds {
            if round > 0 { usleep(1000) }
            for offset in offsets {
                attached.bytes.storeBytes(of: value &+ UInt64(round), toByteOffset: offset, as: UInt64.self)
            }
            round += 1
        }
        if holdMilliseconds > 0 { usleep(UInt32(holdMilliseconds) * 1000) }
    }
}
