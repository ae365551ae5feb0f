import MemReplica
import ArgumentParser

struct StateOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"),
            help: "State folder for the control socket and development PKI (default: $MEMREPLICA_STATE_DIR, else $XDG_STATE_HOME/memreplica, else ~/.local/state/memreplica).")
    var stateDir: String?

    var directory: StateDirectory { StateDirectory(explicit: stateDir) }
}
