import ArgumentParser

struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Manage the certificates peers use to authenticate each other.",
        subcommands: [CertsInitCommand.self])
}
