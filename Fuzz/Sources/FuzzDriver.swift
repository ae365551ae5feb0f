#if canImport(Glibc)
import Glibc
#endif

/// The targets, by the name `scripts/fuzz.sh` and the corpus folders use.
enum FuzzTargetName: String, CaseIterable {
    case frame
    case mux
    case config
    case control
    case http3Route = "http3-route"
    case http3Stream = "http3-stream"
}

/// One fuzz target: a property every input must keep. A broken property
/// ends the process (`fuzzFailure`), which libFuzzer reports as a crash
/// with the input that caused it.
protocol FuzzTarget {
    mutating func run(_ input: [UInt8])
}

/// Breaks off the run: libFuzzer saves the input as a crash artifact.
func fuzzFailure(_ message: String) -> Never {
    printError("memreplica-fuzz: property broken: \(message)")
    abort()
}

/// A line on standard error (the C `stderr` is shared mutable state to Swift 6).
func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// The target libFuzzer drives. A C callback cannot capture, so the
/// chosen target lives here, set once in `start` before the driver runs and
/// used only from libFuzzer's one fuzzing thread.
enum FuzzDriver {
    nonisolated(unsafe) static var target: (any FuzzTarget)?

    static func start(_ name: FuzzTargetName) {
        switch name {
        case .frame: target = FrameDecoderTarget()
        case .mux: target = MuxTarget()
        case .config: target = ConfigTarget()
        case .control: target = ControlTarget()
        case .http3Route: target = HTTP3RouteTarget()
        case .http3Stream: target = HTTP3StreamTarget()
        }
    }
}

/// One input (also under libFuzzer's usual name, for tools that look for it).
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzDriver.target!.run(input)
    return 0
}

/// libFuzzer's entry for a program with its own `main`
/// (compiler-rt/lib/fuzzer/FuzzerInterface.h).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt
