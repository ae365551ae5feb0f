import MemReplicaSystem
import LinuxShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A WAN between two network namespaces on this host: each namespace has a
/// TUN device, and a forwarder thread carries the IP packets between the
/// two devices, applying each direction's `WANLinkProfile` (delay, jitter,
/// loss, rate with a tail-drop queue). Being packet-level, it treats TCP and
/// UDP alike. Side A has 198.18.0.1 and side B 198.18.0.2 (RFC 2544's
/// benchmarking range), reachable only from each other: the namespaces have
/// no other route, so no traffic leaves them.
///
/// Namespaces are named `mrwan-<pid>-<n>-a|b`; a process that dies without
/// `shutdown` leaves them behind, and the next emulator (any process)
/// removes them (`removeStale`). Needs root.
public final class WANEmulator: Sendable {
    public let sideA: NetworkNamespace
    public let sideB: NetworkNamespace
    public let addressA: String
    public let addressB: String
    /// The TUN device's name inside each namespace.
    public static let deviceName = "mrwan0"
    /// Set in each namespace: up to 64 MiB windows. The 4 MiB default caps
    /// a TCP connection's window, and so its rate, below the
    /// bandwidth-delay product of the fast, long links the bench emulates
    /// (figure in bench/RESULTS.md, "Figures behind design choices").
    public static let tcpBufferSysctl = "4096 131072 67108864"
    public static let namePrefix = "mrwan-"

    private let forwarder: WANForwarder
    private let tunA: Int32
    private let tunB: Int32
    private let isShutDown = Locked(false)
    private static let instances = Locked(0)

    /// Creates both namespaces, their TUN devices, addresses and sysctls
    /// (TCP buffer limits, `tcpCongestionControl` as the default controller,
    /// no cached TCP metrics, IPv6 off so only the caller's traffic crosses)
    /// and starts the forwarder. Removes stale namespaces of dead processes
    /// first. `randomSeed` fixes the loss and jitter draws.
    public init(aToB: WANLinkProfile, bToA: WANLinkProfile, tcpCongestionControl: String = "cubic",
                randomSeed: UInt64? = nil) throws {
        guard geteuid() == 0 else { throw WANEmulatorError.notRoot }
        try aToB.validate()
        try bToA.validate()
        _ = try IPRoute.executable()
        let available = Self.availableCongestionControls()
        guard available.contains(tcpCongestionControl) else {
            throw WANEmulatorError.unknownCongestionControl(tcpCongestionControl, available: available)
        }
        try Self.allowCongestionControl(tcpCongestionControl)
        _ = try Self.removeStale()

        let n = Self.instances.withLock { value -> Int in
            value += 1
            return value
        }
        let base = "\(Self.namePrefix)\(getpid())-\(n)"
        sideA = NetworkNamespace(name: base + "-a")
        sideB = NetworkNamespace(name: base + "-b")
        addressA = "198.18.0.1"
        addressB = "198.18.0.2"

        var created: [NetworkNamespace] = []
        var tuns: [Int32] = []
        do {
            for (side, local, remote) in [(sideA, addressA, addressB), (sideB, addressB, addressA)] {
                try IPRoute.run(["netns", "add", side.name])
                created.append(side)
                tuns.append(try Self.configure(side, local: local, remote: remote, congestionControl: tcpCongestionControl))
            }
            tunA = tuns[0]
            tunB = tuns[1]
            var system = SystemRandomNumberGenerator()
            forwarder = try WANForwarder(tunA: tunA, tunB: tunB, aToB: aToB, bToA: bToA,
                                         seed: randomSeed ?? system.next())
        } catch {
            for fd in tuns { close(fd) }
            for side in created { try? IPRoute.run(["netns", "delete", side.name]) }
            throw error
        }
        forwarder.start()
    }

    deinit { shutdown() }

    /// Sysctls first (the device takes the namespace's defaults when it is
    /// made), then the TUN device, opened from inside the namespace so it
    /// lives there, then its link settings and addresses.
    private static func configure(_ side: NetworkNamespace, local: String, remote: String,
                                  congestionControl: String) throws -> Int32 {
        let fd = try side.perform { () throws -> Int32 in
            for (name, value, optional) in [("net/ipv6/conf/all/disable_ipv6", "1", true),
                                            ("net/ipv6/conf/default/disable_ipv6", "1", true),
                                            ("net/ipv4/tcp_rmem", tcpBufferSysctl, false),
                                            ("net/ipv4/tcp_wmem", tcpBufferSysctl, false),
                                            ("net/ipv4/tcp_no_metrics_save", "1", false),
                                            ("net/ipv4/tcp_congestion_control", congestionControl, false)] {
                try writeSysctl(name, value, optional: optional)
            }
            let fd = qs_tun_open(deviceName)
            guard fd >= 0 else { throw WANEmulatorError.system(call: "TUNSETIFF \(deviceName) in \(side.name)", errno: -fd) }
            return fd
        }
        do {
            try IPRoute.run(["-n", side.name, "link", "set", "dev", "lo", "up"])
            try IPRoute.run(["-n", side.name, "link", "set", "dev", deviceName, "mtu", "1500", "txqueuelen", "1000", "up"])
            try IPRoute.run(["-n", side.name, "address", "add", local, "peer", remote + "/32", "dev", deviceName])
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Writes /proc/sys/`name` for the calling thread's namespace (the
    /// net sysctls resolve against the writer's namespace).
    private static func writeSysctl(_ name: String, _ value: String, optional: Bool) throws {
        let key = name.replacingOccurrences(of: "/", with: ".")
        let fd = open("/proc/sys/" + name, O_WRONLY | O_CLOEXEC)
        if fd < 0 {
            if optional && errno == ENOENT { return }
            throw WANEmulatorError.sysctl(name: key, value: value, errno: errno)
        }
        defer { close(fd) }
        let written = value.withCString { write(fd, $0, strlen($0)) }
        if written < 0 { throw WANEmulatorError.sysctl(name: key, value: value, errno: errno) }
    }

    /// A namespace other than the host's may only default to a controller
    /// on the host-wide allowed list (the kernel answers EPERM otherwise), so
    /// the requested one is added to it. This outlives the emulator; it only
    /// widens what unprivileged sockets may pick with TCP_CONGESTION.
    private static func allowCongestionControl(_ name: String) throws {
        let path = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"
        let allowed = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(whereSeparator: \.isWhitespace)
        guard !allowed.contains(Substring(name)) else { return }
        try writeSysctl("net/ipv4/tcp_allowed_congestion_control", (allowed + [Substring(name)]).joined(separator: " "),
                        optional: false)
    }

    static func availableCongestionControls() -> [String] {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_available_congestion_control", encoding: .utf8)) ?? ""
        return text.split(whereSeparator: \.isWhitespace).map(String.init)
    }

    /// Changes both directions live; returns once the forwarder applies
    /// them. Packets already delayed keep their release times. Invalid profiles are a programming error (check with
    /// `WANLinkProfile.validate()` first).
    public func setProfiles(aToB: WANLinkProfile, bToA: WANLinkProfile) {
        do {
            try aToB.validate()
            try bToA.validate()
        } catch {
            preconditionFailure("\(error)")
        }
        forwarder.setProfiles(aToB: aToB, bToA: bToA)
    }

    /// The profiles in force.
    public var profiles: (aToB: WANLinkProfile, bToA: WANLinkProfile) { forwarder.profiles }

    /// The forwarder's counters (as of its last turn) and each device's
    /// kernel tx_dropped (nil once shut down).
    public func statistics() -> WANEmulatorStatistics {
        var (ab, ba) = forwarder.statistics
        if !isShutDown.withLock({ $0 }) {
            ab.kernelTxDropped = try? Self.kernelTxDropped(in: sideA)
            ba.kernelTxDropped = try? Self.kernelTxDropped(in: sideB)
        }
        return WANEmulatorStatistics(aToB: ab, bToA: ba)
    }

    /// tx_dropped of the TUN device in `side`, from /proc/thread-self/net/dev
    /// (which shows the namespace of the reading thread, not the process).
    static func kernelTxDropped(in side: NetworkNamespace) throws -> UInt64? {
        let text = try side.perform { try String(contentsOfFile: "/proc/thread-self/net/dev", encoding: .utf8) }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == deviceName else { continue }
            // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop …
            let fields = parts[1].split(whereSeparator: \.isWhitespace)
            return fields.count > 11 ? UInt64(fields[11]) : nil
        }
        return nil
    }

    /// Stops the forwarder and deletes both namespaces (their devices go
    /// with the forwarder's descriptors). Idempotent.
    public func shutdown() {
        let first = isShutDown.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        forwarder.stop()
        close(tunA)
        close(tunB)
        for side in [sideA, sideB] { try? IPRoute.run(["netns", "delete", side.name]) }
    }

    /// Deletes the `mrwan-<pid>-…` namespaces whose process is gone; returns their names.
    @discardableResult
    public static func removeStale() throws -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: NetworkNamespace.directory) else { return [] }
        var removed: [String] = []
        for name in names.sorted() {
            guard let pid = ownerPID(of: name), pid != getpid(), !processIsAlive(pid) else { continue }
            try IPRoute.run(["netns", "delete", name])
            removed.append(name)
        }
        return removed
    }

    /// The pid in an emulator namespace's name, or nil for other namespaces.
    static func ownerPID(of name: String) -> pid_t? {
        guard name.hasPrefix(namePrefix) else { return nil }
        let fields = name.dropFirst(namePrefix.count).split(separator: "-")
        guard fields.count == 3, fields[2] == "a" || fields[2] == "b", Int(fields[1]) != nil else { return nil }
        return pid_t(fields[0])
    }

    private static func processIsAlive(_ pid: pid_t) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }
}
