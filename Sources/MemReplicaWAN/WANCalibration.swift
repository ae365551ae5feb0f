import MemReplicaSystem
import MemReplicaTransportCore
import LinuxShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Checks an emulator against its own configuration with UDP between the
/// namespaces: echo probes from A to B and back give the round trip
/// (median) and each direction's loss (B counts what arrived, A what came
/// back); a flood at zero delay gives the forwarder's capacity. Run it while
/// nothing else uses the emulator: the flood briefly replaces the profiles.
public enum WANCalibration {
    /// Sends `probes` echo probes, one every `interval`; then, with
    /// `measureCapacity`, floods A→B for `capacityDuration`.
    public static func run(_ emulator: WANEmulator, probes: Int, interval: Duration = .microseconds(100),
                           measureCapacity: Bool = true, capacityDuration: Duration = .milliseconds(500)) throws
        -> WANCalibrationReport {
        precondition(probes > 0, "calibration needs at least one probe")
        var capacity: (perSecond: Double, saturated: Bool)?
        var baseline: Duration?
        if measureCapacity {
            (capacity, baseline) = try withZeroProfiles(emulator) {
                let capacity = try measureForwarderCapacity(emulator, duration: capacityDuration)
                let echo = try probeEcho(emulator, probes: 200, interval: .milliseconds(1))
                return (capacity, echo.rtts.isEmpty ? nil : .nanoseconds(Int64(clamping: echo.rtts.sorted()[(echo.rtts.count - 1) / 2])))
            }
        }

        let (ab, ba) = emulator.profiles
        let before = emulator.statistics()
        let echo = try probeEcho(emulator, probes: probes, interval: interval)
        let during = emulator.statistics().since(before)

        let configuredRTT = ab.delay + ba.delay
        let sorted = echo.rtts.sorted()
        let median = sorted.isEmpty ? UInt64.max : sorted[(sorted.count - 1) / 2]
        let measuredRTT = Duration.nanoseconds(Int64(clamping: median))
        let rttError = abs(measuredRTT.milliseconds - configuredRTT.milliseconds)
        let lossAB = 1 - Double(echo.arrived) / Double(probes)
        let lossBA = echo.arrived == 0 ? 1 : 1 - Double(echo.returned) / Double(echo.arrived)
        let toleranceAB = lossTolerance(ab.lossRate, samples: probes)
        let toleranceBA = lossTolerance(ba.lossRate, samples: max(echo.arrived, 1))
        return WANCalibrationReport(
            probes: probes, configuredRTT: configuredRTT, measuredRTT: measuredRTT,
            minimumRTT: .nanoseconds(Int64(clamping: sorted.first ?? .max)),
            rttAgrees: !sorted.isEmpty && rttError <= WANCalibrationReport.tolerance * configuredRTT.milliseconds,
            configuredLossAToB: ab.lossRate, configuredLossBToA: ba.lossRate,
            measuredLossAToB: lossAB, measuredLossBToA: lossBA,
            lossToleranceAToB: toleranceAB, lossToleranceBToA: toleranceBA,
            lossAgrees: abs(lossAB - ab.lossRate) <= toleranceAB && abs(lossBA - ba.lossRate) <= toleranceBA,
            capacityPacketsPerSecond: capacity?.perSecond, capacitySaturated: capacity?.saturated ?? false,
            baselineRTT: baseline, statistics: during)
    }

    /// 5 % of `rate`, or 3 binomial standard deviations over `samples` if wider.
    static func lossTolerance(_ rate: Double, samples: Int) -> Double {
        max(WANCalibrationReport.tolerance * rate, 3 * (rate * (1 - rate) / Double(samples)).squareRoot())
    }

    private struct EchoResult {
        var rtts: [UInt64]
        var arrived: Int
        var returned: Int
    }

    private static let probeSize = 64

    private static func probeEcho(_ emulator: WANEmulator, probes: Int, interval: Duration) throws -> EchoResult {
        // Large buffers: a probe the socket had no room for would count as
        // lost on the link.
        let responder = try udpSocket(in: emulator.sideB, address: emulator.addressB, receiveBuffer: 8 << 20)
        defer { close(responder.fd) }
        let prober = try udpSocket(in: emulator.sideA, address: emulator.addressA, receiveBuffer: 8 << 20)
        defer { close(prober.fd) }
        try connect(prober.fd, to: emulator.addressB, port: responder.port)
        setReceiveTimeout(responder.fd, .milliseconds(20))
        setReceiveTimeout(prober.fd, .milliseconds(20))

        let echo = startEchoResponder(responder.fd)
        let step = interval.saturatingNanoseconds
        let start = monotonicNanoseconds() + 1_000_000
        let senderDone = startProbeSender(prober.fd, probes: probes, start: start, step: step)
        let deadline = start + UInt64(probes) * step + echoSlack(emulator).saturatingNanoseconds
        let rtts = collectEchoes(prober.fd, probes: probes, until: deadline)
        senderDone.wait()
        echo.stop.withLock { $0 = true }
        echo.done.wait()
        return EchoResult(rtts: rtts, arrived: echo.arrived.withLock { $0 }, returned: rtts.count)
    }

    /// B: echoes everything back, counting what arrived, until `stop`.
    private static func startEchoResponder(_ responderFD: Int32)
        -> (stop: Locked<Bool>, arrived: Locked<Int>, done: DispatchSemaphore) {
        let stopEcho = Locked(false)
        let arrived = Locked(0)
        let echoDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 2048)
            var count = 0
            while !stopEcho.withLock({ $0 }) {
                var from = sockaddr_storage()
                var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let n = withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(responderFD, &buffer, buffer.count, 0, $0, &length) }
                }
                guard n > 0 else { continue }
                count += 1
                _ = withUnsafePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(responderFD, buffer, n, 0, $0, length) }
                }
            }
            arrived.withLock { $0 = count }
            echoDone.signal()
        }
        return (stopEcho, arrived, echoDone)
    }

    /// A: one probe every `step` ns from `start`, each stamped with its
    /// sequence number and send time. Signals once all are sent.
    private static func startProbeSender(_ proberFD: Int32, probes: Int, start: UInt64, step: UInt64) -> DispatchSemaphore {
        let senderDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            _ = qs_thread_timer_slack(1)
            var payload = [UInt8](repeating: 0, count: probeSize)
            for sequence in 0..<probes {
                sleepUntil(start + UInt64(sequence) * step)
                let now = monotonicNanoseconds()
                payload.withUnsafeMutableBytes {
                    $0.storeBytes(of: UInt64(sequence).littleEndian, as: UInt64.self)
                    $0.storeBytes(of: now.littleEndian, toByteOffset: 8, as: UInt64.self)
                }
                _ = send(proberFD, payload, payload.count, 0)
            }
            senderDone.signal()
        }
        return senderDone
    }

    /// How long after the last probe an echo may still arrive: both
    /// directions' delay and jitter, a full queue at the rate limit, and a
    /// second.
    private static func echoSlack(_ emulator: WANEmulator) -> Duration {
        let (ab, ba) = emulator.profiles
        var slack = ab.delay + ab.jitter + ba.delay + ba.jitter + .seconds(1)
        for profile in [ab, ba] {
            if let rate = profile.rateBitsPerSecond { slack += .seconds(Double(profile.queueLimitBytes) * 8 / Double(rate)) }
        }
        return slack
    }

    /// The round-trip time of each probe echoed back before `deadline`
    /// (each counted once).
    private static func collectEchoes(_ proberFD: Int32, probes: Int, until deadline: UInt64) -> [UInt64] {
        var seen = [Bool](repeating: false, count: probes)
        var rtts: [UInt64] = []
        rtts.reserveCapacity(probes)
        var buffer = [UInt8](repeating: 0, count: 2048)
        while rtts.count < probes && monotonicNanoseconds() < deadline {
            let n = recv(proberFD, &buffer, buffer.count, 0)
            let now = monotonicNanoseconds()
            guard n >= 16 else { continue }
            let (sequence, sent) = buffer.withUnsafeBytes {
                (Int(truncatingIfNeeded: UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))),
                 UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
            }
            guard sequence >= 0, sequence < probes, !seen[sequence] else { continue }
            seen[sequence] = true
            rtts.append(now &- sent)
        }
        return rtts
    }

    /// Runs `body` with both directions at zero delay, no loss and no rate limit, then restores the profiles.
    private static func withZeroProfiles<T>(_ emulator: WANEmulator, _ body: () throws -> T) throws -> T {
        let saved = emulator.profiles
        emulator.setProfiles(aToB: WANLinkProfile(), bToA: WANLinkProfile())
        defer {
            // The flood's tail (up to a TUN queue's worth) leaves at zero
            // delay before the probes meet the real profiles.
            var last = emulator.statistics().aToB
            for _ in 0..<100 {
                usleep(10_000)
                let now = emulator.statistics().aToB
                if now.packetsReceived == last.packetsReceived && now.packetsInFlight == 0 { break }
                last = now
            }
            emulator.setProfiles(aToB: saved.aToB, bToA: saved.bToA)
        }
        return try body()
    }

    /// Floods A→B with small datagrams and counts what the forwarder passes
    /// per second. The sink in B is never read: its small buffer fills and
    /// the kernel discards the rest cheaply.
    private static func measureForwarderCapacity(_ emulator: WANEmulator, duration: Duration) throws
        -> (perSecond: Double, saturated: Bool) {
        let sink = try udpSocket(in: emulator.sideB, address: emulator.addressB, receiveBuffer: 4096)
        defer { close(sink.fd) }
        let source = try udpSocket(in: emulator.sideA, address: emulator.addressA)
        defer { close(source.fd) }
        try connect(source.fd, to: emulator.addressB, port: sink.port)

        let stop = Locked(false)
        let done = DispatchSemaphore(value: 0)
        let sourceFD = source.fd
        Thread.detachNewThread {
            let payload = [UInt8](repeating: 0x5a, count: probeSize)
            while !stop.withLock({ $0 }) {
                for _ in 0..<256 { _ = send(sourceFD, payload, payload.count, Int32(MSG_DONTWAIT)) }
            }
            done.signal()
        }
        usleep(100_000)  // past the start-up transient
        let first = emulator.statistics()
        let t0 = monotonicNanoseconds()
        sleepUntil(t0 + duration.saturatingNanoseconds)
        let second = emulator.statistics()
        let t1 = monotonicNanoseconds()
        stop.withLock { $0 = true }
        done.wait()
        let delta = second.since(first).aToB
        return (Double(delta.packetsPassed) / (Double(t1 - t0) / 1e9), (delta.kernelTxDropped ?? 0) > 0)
    }

    /// A UDP socket made inside `namespace`, bound to `address` on an ephemeral port.
    static func udpSocket(in namespace: NetworkNamespace, address: String, receiveBuffer: Int32? = nil) throws
        -> (fd: Int32, port: UInt16) {
        let fd = try namespace.perform { socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        guard fd >= 0 else { throw WANEmulatorError.system(call: "socket in \(namespace.name)", errno: errno) }
        do {
            if var size = receiveBuffer {
                _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            let local = try PeerAddress(host: address, port: 0)
            guard local.storage.withSockaddr({ bind(fd, $0, $1) }) == 0 else {
                throw WANEmulatorError.system(call: "bind \(address) in \(namespace.name)", errno: errno)
            }
            return (fd, PeerAddress(storage: SocketAddressStorage.local(of: fd)).port)
        } catch {
            close(fd)
            throw error
        }
    }

    private static func connect(_ fd: Int32, to address: String, port: UInt16) throws {
        let remote = try PeerAddress(host: address, port: port)
        guard remote.storage.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            throw WANEmulatorError.system(call: "connect \(remote)", errno: errno)
        }
    }

    private static func setReceiveTimeout(_ fd: Int32, _ timeout: Duration) {
        let micro = Int(timeout.saturatingNanoseconds / 1000)
        var tv = timeval(tv_sec: micro / 1_000_000, tv_usec: micro % 1_000_000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sleeps until CLOCK_MONOTONIC reaches `deadline` (ns).
    static func sleepUntil(_ deadline: UInt64) {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
}
