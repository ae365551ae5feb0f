import Foundation

// Not `@main`: ArgumentParser exits 64 on usage errors, memreplica promises 2.
exit(await CommandRunner.run(Array(CommandLine.arguments.dropFirst())))
