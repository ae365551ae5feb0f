@testable import MemReplica
@testable import MemReplicaSystem
@testable import MemReplicaTransportCore
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A config file's text, read as if it were /etc/memreplica/peer.json.
private func load(_ json: String) throws -> PeerConfiguration {
    try PeerConfiguration(json: Array(json.utf8), file: "peer.json", folder: "/etc/memreplica")
}

/// The one-line message a config (or command line) is refused with; nil if accepted.
private func refusal(_ body: () throws -> PeerConfiguration) -> String? {
    do {
        _ = try body()
        return nil
    } catch let error as PeerConfigurationError {
        return error.description
    } catch {
        return "not a PeerConfigurationError: \(error)"
    }
}

private func refusal(_ json: String) -> String? { refusal { try load(json) } }

/// The repository's root, from this file's place in it.
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

@Suite("Peer config file")
struct PeerConfigurationTests {
    @Test("a file with every setting gives the same specs as the flags would")
    func fullFile() throws {
        let configuration = try load("""
            {
              "listen": "127.0.0.1:4433",
              "name": "peer-a",
              "stateDir": "state",
              "control": "/run/memreplica.sock",
              "acceptMigrations": "taken",
              "tls": {"cert": "a.pem", "key": "/keys/a-key.pem", "ca": "../ca.pem"},
              "exports": [
                {"name": "cache", "path": "/dev/shm/cache", "size": "1G", "chunk": "64K", "allow": ["peer-b", "peer-c"]},
                {"name": "log", "path": "data/log", "size": 1048576, "chunk": 4096},
                {"name": "plain", "path": "/p"}
              ],
              "mirrors": [{"name": "sessions", "peer": "10.0.0.2:4433", "path": "/var/lib/x/sessions"},
                          {"name": "heap", "peer": "10.0.0.2:4433", "path": "/dev/shm/heap", "lazy": true}]
            }
            """)
        #expect(configuration.listen == (try PeerAddress(parsing: "127.0.0.1:4433")))
        #expect(configuration.name == "peer-a")
        // Relative paths are the config file's folder's.
        #expect(configuration.stateDirectory == "/etc/memreplica/state")
        #expect(configuration.control == "/run/memreplica.sock")
        #expect(configuration.acceptMigrations == "/etc/memreplica/taken")
        #expect(configuration.tls == .init(cert: "/etc/memreplica/a.pem", key: "/keys/a-key.pem", ca: "/etc/ca.pem"))
        #expect(configuration.exports == [
            try ExportSpec(parsing: "cache=/dev/shm/cache,size=1G,chunk=64K,allow=peer-b+peer-c"),
            try ExportSpec(parsing: "log=/etc/memreplica/data/log,size=1M,chunk=4K"),
            try ExportSpec(parsing: "plain=/p"),
        ])
        #expect(configuration.exports[0].size == 1 << 30)
        #expect(configuration.exports[2].size == nil && configuration.exports[2].chunkSize == ExportSpec.defaultChunkSize)
        #expect(configuration.mirrors == [try MirrorSpec(parsing: "sessions@10.0.0.2:4433=/var/lib/x/sessions"),
                                          try MirrorSpec(parsing: "heap@10.0.0.2:4433=/dev/shm/heap", lazy: true)])
    }

    @Test("an empty file leaves every setting at its default")
    func emptyFile() throws {
        let configuration = try load("{}")
        #expect(configuration == PeerConfiguration())
        #expect(try configuration.listenAddress == PeerAddress(parsing: ":4433"))
        #expect(configuration.name == nil && configuration.stateDirectory == nil && configuration.control == nil)
        #expect(configuration.tls == nil && configuration.exports.isEmpty && configuration.mirrors.isEmpty)
    }

    @Test("unknown keys are named with their path", arguments: [
        (#"{"exports": [{"name": "a", "path": "/a"}, {"name": "b", "path": "/b", "sise": "1M"}]}"#,
         "peer.json: exports[1].sise: unknown key; known keys: name, path, size, chunk, allow"),
        (#"{"lisen": ":4433"}"#,
         "peer.json: lisen: unknown key; known keys: listen, name, stateDir, control, tls, exports, mirrors, metrics, faultTimeout, congestionControl, compression, livenessTimeout, memoryBudget, acceptMigrations, bulkQueue"),
        (#"{"tls": {"cert": "c", "key": "k", "ca": "a", "pin": "x"}}"#,
         "peer.json: tls.pin: unknown key; known keys: cert, key, ca"),
        (#"{"mirrors": [{"name": "a", "peer": "10.0.0.2:1", "path": "/a", "mode": "lazy"}]}"#,
         "peer.json: mirrors[0].mode: unknown key; known keys: name, peer, path, lazy, expect, allow, maxSize, durable"),
    ])
    func unknownKeys(json: String, message: String) {
        #expect(refusal(json) == message)
    }

    @Test("values of the wrong type are named with their path", arguments: [
        ("[]", "peer.json: expected an object, found an array"),
        (#"{"listen": 4433}"#, "peer.json: listen: expected a string, found the number 4433"),
        (#"{"name": null}"#, "peer.json: name: expected a string, found null"),
        (#"{"tls": "files"}"#, "peer.json: tls: expected an object, found a string"),
        (#"{"exports": {"name": "a"}}"#, "peer.json: exports: expected an array, found an object"),
        (#"{"exports": ["a=/a"]}"#, "peer.json: exports[0]: expected an object, found a string"),
        (#"{"exports": [{"name": "a", "path": "/a", "allow": "b"}]}"#,
         "peer.json: exports[0].allow: expected an array, found a string"),
        (#"{"exports": [{"name": "a", "path": "/a", "allow": ["b", 3]}]}"#,
         "peer.json: exports[0].allow[1]: expected a string, found the number 3"),
        (#"{"exports": [{"name": "a", "path": "/a", "size": true}]}"#,
         #"peer.json: exports[0].size: expected a positive whole number of bytes, or a string such as "64K" or "1G", found true"#),
        (#"{"mirrors": [{"name": "a", "peer": ["10.0.0.2", 1], "path": "/a"}]}"#,
         "peer.json: mirrors[0].peer: expected a string, found an array"),
        (#"{"mirrors": [{"name": "a", "peer": "10.0.0.2:1", "path": "/a", "lazy": "yes"}]}"#,
         "peer.json: mirrors[0].lazy: expected true or false, found a string"),
    ])
    func wrongTypes(json: String, message: String) {
        #expect(refusal(json) == message)
    }

    @Test("byte counts are positive whole numbers or K/M/G/T strings", arguments: [
        ("0", "0 is not a byte count"),
        ("-4096", "-4096 is not a byte count"),
        ("1.5", "1.5 is not a byte count"),
        ("1e6", "1e6 is not a byte count"),
        (#""1Q""#, #""1Q" is not a byte count"#),
        (#""64 M""#, #""64 M" is not a byte count"#),
        ("99999999999999999999", "99999999999999999999 is not a byte count"),
    ])
    func badByteCounts(size: String, start: String) {
        let message = refusal(#"{"exports": [{"name": "a", "path": "/a", "size": \#(size)}]}"#)
        #expect(message == #"peer.json: exports[0].size: \#(start): expected a positive whole number of bytes, or a string such as "64K" or "1G""#)
    }

    @Test("a missing required key is named", arguments: [
        (#"{"exports": [{"path": "/a"}]}"#, "peer.json: exports[0]: missing required key 'name'"),
        (#"{"exports": [{"name": "a"}]}"#, "peer.json: exports[0]: missing required key 'path'"),
        (#"{"mirrors": [{"name": "a", "path": "/a"}]}"#, "peer.json: mirrors[0]: missing required key 'peer'"),
        (#"{"tls": {"cert": "c", "key": "k"}}"#,
         "peer.json: tls: cert, key and ca go together: give all three, or leave tls out to use the development CA"),
        (#"{"name": ""}"#, "peer.json: name: must not be empty"),
    ])
    func missing(json: String, message: String) {
        #expect(refusal(json) == message)
    }

    @Test("the spec rules the flags obey apply to the file, at the setting's path", arguments: [
        (#"{"exports": [{"name": "a,b", "path": "/a"}]}"#,
         "peer.json: exports[0].name: region name 'a,b' must be 1 to 255 bytes without ','"),
        (#"{"exports": [{"name": "a", "path": "/a", "chunk": 3000}]}"#,
         "peer.json: exports[0].chunk: chunk size 3000 must be a power of two from 4096 to 1048576"),
        (#"{"exports": [{"name": "a", "path": "/a", "chunk": "2M"}]}"#,
         "peer.json: exports[0].chunk: chunk size 2097152 must be a power of two from 4096 to 1048576"),
        (#"{"exports": [{"name": "a", "path": "/a", "size": "2T"}]}"#,
         "peer.json: exports[0].size: region size 2199023255552 must be from 1 byte to 1024 GiB"),
        (#"{"mirrors": [{"name": "a", "peer": ":4433", "path": "/a"}]}"#,
         "peer.json: mirrors[0].peer: the exporting peer needs a host"),
        (#"{"mirrors": [{"name": "a", "peer": "10.0.0.2", "path": "/a"}]}"#,
         "peer.json: mirrors[0].peer: bad address '10.0.0.2': missing ':PORT' (expected HOST:PORT, [IPv6]:PORT or :PORT)"),
        (#"{"listen": "[::1:4433"}"#,
         "peer.json: listen: bad address '[::1:4433': unbalanced brackets (expected HOST:PORT, [IPv6]:PORT or :PORT)"),
    ])
    func specRules(json: String, message: String) {
        #expect(refusal(json) == message)
    }

    @Test("the flag parser refuses with the same rule's words")
    func sameRuleForFlags() {
        #expect(throws: SpecError("export 'a=/a,chunk=3000': chunk size 3000 must be a power of two from 4096 to 1048576")) {
            try ExportSpec(parsing: "a=/a,chunk=3000")
        }
        #expect(throws: SpecError("mirror 'a@:4433=/a': the exporting peer needs a host")) {
            try MirrorSpec(parsing: "a@:4433=/a")
        }
        #expect(throws: SpecError("chunk size 3000 must be a power of two from 4096 to 1048576", field: "chunk")) {
            try ExportSpec(name: "a", path: "/a", chunkSize: 3000)
        }
    }

    @Test("a region exported twice, or two mirrors (or a mirror and an export) on one file, are refused", arguments: [
        (#"{"exports": [{"name": "a", "path": "/a"}, {"name": "b", "path": "/b"}, {"name": "a", "path": "/c"}]}"#,
         "peer.json: exports[2].name: region 'a' is exported twice (also exports[0])"),
        (#"{"mirrors": [{"name": "a", "peer": "10.0.0.2:1", "path": "cache"}, {"name": "b", "peer": "10.0.0.3:1", "path": "x/../cache"}]}"#,
         "peer.json: mirrors[1].path: /etc/memreplica/cache is also the local file of mirrors[0]"),
        (#"{"exports": [{"name": "a", "path": "/a"}], "mirrors": [{"name": "a", "peer": "10.0.0.2:1", "path": "/a"}]}"#,
         "peer.json: mirrors[0].path: /a is also the local file of exports[0]"),
    ])
    func duplicates(json: String, message: String) {
        #expect(refusal(json) == message)
    }

    @Test("a file that cannot be read is one clear line")
    func unreadable() throws {
        let folder = NSTemporaryDirectory() + "mr-config-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        #expect(refusal { try PeerConfiguration(contentsOfFile: folder + "/missing.json") }
                == "cannot read config file \(folder)/missing.json: No such file or directory")
        #expect(refusal { try PeerConfiguration(contentsOfFile: folder) } == "cannot read config file \(folder): Is a directory")
        let huge = folder + "/huge.json"
        try Data(repeating: UInt8(ascii: " "), count: PeerConfiguration.maximumFileSize + 1).write(to: URL(fileURLWithPath: huge))
        #expect(refusal { try PeerConfiguration(contentsOfFile: huge) }
                == "cannot read config file \(huge): larger than 1 MiB; is it the right file?")
        let broken = folder + "/broken.json"
        try Data("{\n  \"listen\": \":4433\",\n}\n".utf8).write(to: URL(fileURLWithPath: broken))
        #expect(refusal { try PeerConfiguration(contentsOfFile: broken) }
                == "\(broken):3:1: expected a key in double quotes, found '}'")
    }

    @Test("relative paths in a file on disk are its folder's")
    func relativeToTheFile() throws {
        let folder = NSTemporaryDirectory() + "mr-config-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder + "/conf", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = folder + "/conf/peer.json"
        try Data(#"{"stateDir": "../state", "exports": [{"name": "r", "path": "r.bin"}]}"#.utf8).write(to: URL(fileURLWithPath: file))
        let configuration = try PeerConfiguration(contentsOfFile: file)
        let root = URL(fileURLWithPath: folder).standardizedFileURL.path
        #expect(configuration.stateDirectory == root + "/state")
        #expect(configuration.exports.map(\.path) == [root + "/conf/r.bin"])
    }

    @Test("docs/peer.example.json and the README's example are valid, and the same")
    func examples() throws {
        let example = try String(contentsOfFile: repositoryRoot + "/docs/peer.example.json", encoding: .utf8)
        let configuration = try load(example)
        #expect(configuration.listen == (try PeerAddress(parsing: ":4433")))
        #expect(configuration.tls != nil)
        #expect(configuration.exports.map(\.name) == ["cache", "journal"])
        #expect(configuration.exports[0].size == 1 << 30 && configuration.exports[0].allowedPeers == ["peer-b"])
        #expect(configuration.exports[1].size == 64 << 20)
        #expect(configuration.mirrors.map(\.name) == ["sessions"])

        let readme = try String(contentsOfFile: repositoryRoot + "/README.md", encoding: .utf8)
        let section = try #require(readme.range(of: "## Config file"), "README has no 'Config file' section")
        let fence = try #require(readme.range(of: "```json\n", range: section.upperBound..<readme.endIndex))
        let end = try #require(readme.range(of: "```", range: fence.upperBound..<readme.endIndex))
        #expect(String(readme[fence.upperBound..<end.lowerBound]) == example)
    }
}

@Suite("Command-line flags on top of a config file")
struct PeerConfigurationFlagTests {
    private let file = #"""
        {"listen": "127.0.0.1:5000", "name": "from-file", "stateDir": "/state", "control": "/file.sock",
         "tls": {"cert": "/f.pem", "key": "/f-key.pem", "ca": "/ca.pem"},
         "exports": [{"name": "a", "path": "/a"}],
         "mirrors": [{"name": "m", "peer": "10.0.0.2:4433", "path": "/m"}]}
        """#

    @Test("scalar flags given replace the file's values; those not given leave them")
    func scalarsOverride() throws {
        var configuration = try load(file)
        try configuration.applyCommandLine(listen: "127.0.0.1:6000", control: "/flag.sock", acceptMigrations: "/taken")
        #expect(configuration.acceptMigrations == "/taken")
        #expect(configuration.listen == (try PeerAddress(parsing: "127.0.0.1:6000")))
        #expect(configuration.control == "/flag.sock")
        #expect(configuration.name == "from-file" && configuration.stateDirectory == "/state")
        #expect(configuration.tls == .init(cert: "/f.pem", key: "/f-key.pem", ca: "/ca.pem"))

        let tls = PeerConfiguration.TLSFiles(cert: "/g.pem", key: "/g-key.pem", ca: "/ca2.pem")
        try configuration.applyCommandLine(name: "from-flag", stateDirectory: "/other", tls: tls)
        #expect(configuration.name == "from-flag" && configuration.stateDirectory == "/other" && configuration.tls == tls)
        #expect(configuration.listen == (try PeerAddress(parsing: "127.0.0.1:6000")))
    }

    @Test("bulkQueue takes milliseconds or \"off\", in the file and as --bulk-queue; the flag wins")
    func bulkQueue() throws {
        #expect(try load("{}").bulkQueue == nil)
        #expect(try load(#"{"bulkQueue": 1.5}"#).bulkQueue == .allowance(.microseconds(1500)))
        #expect(try load(#"{"bulkQueue": 0}"#).bulkQueue?.allowance == .zero)
        var configuration = try load(#"{"bulkQueue": "off"}"#)
        #expect(configuration.bulkQueue == .off && configuration.bulkQueue?.allowance == nil)
        try configuration.applyCommandLine(bulkQueue: "5")
        #expect(configuration.bulkQueue == .allowance(.milliseconds(5)))
        #expect(refusal(#"{"bulkQueue": -1}"#)
            == "peer.json: bulkQueue: -1 is not a bulk queue allowance: expected milliseconds from 0 to 1000, such as 2.5, or \"off\"")
        #expect(refusal(#"{"bulkQueue": "fast"}"#)
            == "peer.json: bulkQueue: expected milliseconds from 0 to 1000, such as 2.5, or \"off\", found a string")
        #expect(refusal {
            var c = PeerConfiguration()
            try c.applyCommandLine(bulkQueue: "2000")
            return c
        } == "--bulk-queue 2000: expected milliseconds from 0 to 1000, such as 2.5, or \"off\"")
    }

    @Test("no --listen keeps the file's address; neither gives :4433")
    func listenDefault() throws {
        var fromFile = try load(file)
        try fromFile.applyCommandLine()
        #expect(try fromFile.listenAddress == PeerAddress(parsing: "127.0.0.1:5000"))
        var neither = PeerConfiguration()
        try neither.applyCommandLine(exports: ["a=/a"])
        #expect(try neither.listenAddress == PeerAddress(parsing: ":4433"))
    }

    @Test("--export and --mirror are added after the file's")
    func listsAppend() throws {
        var configuration = try load(file)
        try configuration.applyCommandLine(exports: ["b=/b,size=1M", "c=/c"], mirrors: ["n@10.0.0.3:4433=/n"])
        #expect(configuration.exports == [try ExportSpec(parsing: "a=/a"), try ExportSpec(parsing: "b=/b,size=1M"),
                                          try ExportSpec(parsing: "c=/c")])
        #expect(configuration.mirrors == [try MirrorSpec(parsing: "m@10.0.0.2:4433=/m"),
                                          try MirrorSpec(parsing: "n@10.0.0.3:4433=/n")])
    }

    @Test("duplicates between the file and the flags, or among the flags, are refused", arguments: [
        (["a=/other"], [String](), "--export a=/other: region 'a' is exported twice (also exports[0] of peer.json)"),
        (["b=/b", "b=/c"], [], "--export b=/c: region 'b' is exported twice (also --export b=/b)"),
        ([], ["m@10.0.0.3:4433=/m"], "--mirror m@10.0.0.3:4433=/m: /m is also the local file of mirrors[0] of peer.json"),
        ([], ["x@10.0.0.3:4433=/a"], "--mirror x@10.0.0.3:4433=/a: /a is also the local file of exports[0] of peer.json"),
        (["x=/m"], [], "--export x=/m: /m is also the local file of mirrors[0] of peer.json"),
    ])
    func duplicates(exports: [String], mirrors: [String], message: String) {
        #expect(refusal {
            var configuration = try load(file)
            try configuration.applyCommandLine(exports: exports, mirrors: mirrors)
            return configuration
        } == message)
    }

    @Test("a bad flag is named", arguments: [
        (["a,b=/x"], [String](), nil as String?, "--export: export 'a,b=/x': region name 'a,b' must be 1 to 255 bytes without ','"),
        ([], ["m@10.0.0.2:4433="], nil, "--mirror: mirror 'm@10.0.0.2:4433=': missing PATH"),
        ([], [], "4433", "--listen: bad address '4433': missing ':PORT' (expected HOST:PORT, [IPv6]:PORT or :PORT)"),
    ])
    func badFlags(exports: [String], mirrors: [String], listen: String?, message: String) {
        #expect(refusal {
            var configuration = PeerConfiguration()
            try configuration.applyCommandLine(listen: listen, exports: exports, mirrors: mirrors)
            return configuration
        } == message)
    }
}

@Suite("memreplica peer --config, as a process", .serialized)
struct PeerConfigurationProcessTests {
    /// Runs `memreplica ARGS` with stderr in a file; returns the exit status and stderr.
    private func run(_ arguments: [String], in folder: String) throws -> (status: Int32, stderr: String) {
        let errors = folder + "/stderr.txt"
        let quoted = arguments.map { "'\($0)'" }.joined(separator: " ")
        let child = try ChildProcess("/bin/sh", ["-c", "exec '\(try builtExecutable())' \(quoted) 2>'\(errors)'"])
        let status = child.wait()
        return (status, (try? String(contentsOfFile: errors, encoding: .utf8)) ?? "")
    }

    @Test("a bad config file: exit status 2, one line on stderr, nothing created")
    func badFile() throws {
        let folder = NSTemporaryDirectory() + "mr-config-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let file = folder + "/peer.json"
        try Data("""
            {"exports": [{"name": "a", "path": "a.bin"},
                         {"name": "b", "path": "b.bin", "sise": "1M"}]}
            """.utf8).write(to: URL(fileURLWithPath: file))
        let bad = try run(["peer", "--config", file, "--state-dir", folder + "/state"], in: folder)
        #expect(bad.status == 2)
        #expect(bad.stderr == "memreplica: error: \(file): exports[1].sise: unknown key; known keys: name, path, size, chunk, allow (see 'memreplica peer --help')\n")
        #expect(!FileManager.default.fileExists(atPath: folder + "/state"))
        #expect(!FileManager.default.fileExists(atPath: folder + "/a.bin"))

        let missing = try run(["peer", "--config", folder + "/nope.json"], in: folder)
        #expect(missing.status == 2)
        #expect(missing.stderr == "memreplica: error: cannot read config file \(folder)/nope.json: No such file or directory (see 'memreplica peer --help')\n")
    }

    @Test("a peer runs with the file's settings, flags on top, and no default overriding the file")
    func runsFromFile() async throws {
        let folder = NSTemporaryDirectory() + "mr-config-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let port = unusedUDPPort()
        let file = folder + "/peer.json"
        try Data("""
            {"listen": "127.0.0.1:\(port)", "name": "from-file", "stateDir": "state", "control": "file.sock",
             "exports": [{"name": "r", "path": "r.bin", "size": "1M", "chunk": "16K"}]}
            """.utf8).write(to: URL(fileURLWithPath: file))
        let flagSocket = folder + "/flag.sock"
        let peer = try ChildProcess(try builtExecutable(), ["peer", "--config", file, "--control", flagSocket,
                                                            "--log-level", "warning"])
        defer { peer.terminate(grace: .milliseconds(500)) }

        let deadline = ContinuousClock.now + .seconds(30)
        var report: StatusReport?
        while report == nil {
            try #require(peer.isRunning, "the peer exited early")
            try #require(ContinuousClock.now < deadline, "the peer never answered on --control")
            report = try? await ControlClient(path: flagSocket, timeout: .seconds(2)).status()
            if report == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let status = try #require(report)
        #expect(status.listenAddress == "127.0.0.1:\(port)")
        #expect(status.identity.commonName == "from-file")
        #expect(status.regions.map(\.name) == ["r"])
        #expect(status.regions.first?.size == 1 << 20 && status.regions.first?.chunkSize == 16 << 10)
        #expect(status.regions.first?.path == folder + "/r.bin")
        #expect(FileManager.default.fileExists(atPath: folder + "/state/dev-pki/from-file.pem"))
        #expect(!FileManager.default.fileExists(atPath: folder + "/file.sock"))
        kill(peer.pid, SIGTERM)
        #expect(peer.wait() == 0)
    }
}
