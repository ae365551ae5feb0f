#if canImport(Glibc)
import Glibc
#endif

// memreplica-fuzz TARGET [libFuzzer flags and corpus folders]
//
// One libFuzzer binary for every target (one link of the instrumented
// library instead of six). The target is the first argument; it is also put
// in MEMREPLICA_FUZZ_TARGET, so processes libFuzzer starts itself (-fork,
// -jobs, -merge) run the same one.

let environmentKey = "MEMREPLICA_FUZZ_TARGET"
var arguments = Array(UnsafeBufferPointer(start: CommandLine.unsafeArgv, count: Int(CommandLine.argc)))
if arguments.count > 1, let first = arguments[1], let target = FuzzTargetName(rawValue: String(cString: first)) {
    setenv(environmentKey, target.rawValue, 1)
    arguments.remove(at: 1)
}
guard let chosen = getenv(environmentKey).flatMap({ FuzzTargetName(rawValue: String(cString: $0)) }) else {
    let names = FuzzTargetName.allCases.map(\.rawValue).joined(separator: "|")
    printError("usage: memreplica-fuzz \(names) [libFuzzer options] [corpus folders]")
    exit(2)
}
FuzzDriver.start(chosen)
var argc = CInt(arguments.count)
exit(arguments.withUnsafeMutableBufferPointer { buffer -> CInt in
    var argv = buffer.baseAddress
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzOneInput)
})
