import MemReplicaSystem
import MemReplicaWAN
import ArgumentParser
import Foundation

/// Holds a WAN emulator for manual experiments and for the crash-cleanup
/// test (which kills this process and expects the next emulator to remove
/// the namespaces it left).
struct WANEmulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wan-emulator",
        abstract: "Set up an emulated WAN between two network namespaces (needs root; for experiments and tests).",
        discussion: """
            Prints the namespaces and addresses (side A 198.18.0.1, side B 198.18.0.2), then with --calibrate \
            measures RTT, loss and the forwarder's capacity, and with --hold keeps the link up until SIGINT or \
            SIGTERM. Run programs on either side with 'ip netns exec NAME …'.
            """,
        shouldDisplay: false)

    @Option(help: ArgumentHelp("Round-trip delay, half each way (e.g. 50ms, 200us, 1s).", valueName: "duration"))
    var rtt: String = "0ms"

    @Option(help: ArgumentHelp("Jitter on each one-way delay, uniform ±.", valueName: "duration"))
    var jitter: String = "0ms"

    @Flag(help: "Keep packets in order under jitter (default: each leaves at its own time, so they reorder).")
    var inOrder = false

    @Option(help: ArgumentHelp("Random loss per direction, in percent.", valueName: "percent"))
    var loss: Double = 0

    @Option(help: ArgumentHelp("Rate limit per direction in Mbit/s (default: unlimited).", valueName: "mbit/s"))
    var rate: Double?

    @Option(help: ArgumentHelp("Tail-drop queue in front of the rate limiter, in bytes.", valueName: "bytes"))
    var queue: Int = 4 << 20

    @Option(help: "Default TCP congestion control inside the namespaces.")
    var cc: String = "cubic"

    @Flag(help: "Measure configured against actual RTT and loss, and the forwarder's capacity.")
    var calibrate = false

    @Option(help: "Echo probes for --calibrate.")
    var probes: Int = 2000

    @Option(help: ArgumentHelp("Time between echo probes for --calibrate.", valueName: "duration"))
    var probeInterval: String = "100us"

    @Flag(help: "With --calibrate, skip the capacity flood.")
    var noCapacity = false

    @Flag(help: "Keep the emulator up until SIGINT or SIGTERM.")
    var hold = false

    func validate() throws {
        if !(0...100).contains(loss) { throw ValidationError("--loss must be between 0 and 100") }
        if let rate, !(rate > 0) { throw ValidationError("--rate must be positive") }
        if probes < 1 { throw ValidationError("--probes must be at least 1") }
        _ = try Self.duration(rtt, "--rtt")
        _ = try Self.duration(jitter, "--jitter")
        _ = try Self.duration(probeInterval, "--probe-interval")
    }

    func run() async throws {
        let profiles = WANLinkProfile.symmetric(
            rtt: try Self.duration(rtt, "--rtt"), lossRate: loss / 100, jitter: try Self.duration(jitter, "--jitter"),
            reorder: !inOrder, rateBitsPerSecond: rate.map { UInt64($0 * 1e6) }, queueLimitBytes: queue)
        let signals = SignalMonitor { _ in Foundation.exit(1) }
        let emulator = try WANEmulator(aToB: profiles.forward, bToA: profiles.reverse, tcpCongestionControl: cc)
        defer { emulator.shutdown() }
        print("side A: namespace \(emulator.sideA.name), address \(emulator.addressA)")
        print("side B: namespace \(emulator.sideB.name), address \(emulator.addressB)")
        print("each direction: \(profiles.forward)")
        fflush(nil)  // a test reads the lines through a pipe while this process lives
        if calibrate {
            print(try WANCalibration.run(emulator, probes: probes, interval: Self.duration(probeInterval, "--probe-interval"),
                                         measureCapacity: !noCapacity))
            fflush(nil)
        }
        if hold {
            print("holding; SIGINT or SIGTERM tears down")
            fflush(nil)
            _ = await signals.wait()
            print(emulator.statistics())
        }
    }

    /// "50ms", "200us", "1.5s", "0".
    static func duration(_ text: String, _ option: String) throws -> Duration {
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("s", 1)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)), value >= 0 { return .seconds(value * scale) }
        }
        if text == "0" { return .zero }
        throw ValidationError("\(option) wants a duration such as 50ms, 200us or 1s, not '\(text)'")
    }
}
