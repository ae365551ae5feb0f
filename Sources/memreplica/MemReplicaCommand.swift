import MemReplica
import ArgumentParser

struct MemReplicaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memreplica",
        abstract: "Replicate live memory between hosts over QUIC (mutual TLS 1.3).",
        discussion: """
            Exit status: 0 success, 1 runtime failure, 2 bad usage.
            """,
        version: memReplicaVersion,
        subcommands: [PeerCommand.self, StatusCommand.self, StatsCommand.self, CatCommand.self, VerifyCommand.self, MigrateCommand.self, PingCommand.self, CertsCommand.self, BenchCommand.self,
                      VersionCommand.self, AttachWriteCommand.self, WANEmulatorCommand.self])
}
