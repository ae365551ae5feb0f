import MemReplica
import MemReplicaSystem
import Foundation

/// ngtcp2's own example server and client (Debian's ngtcp2-server and
/// ngtcp2-client, GnuTLS builds): an HTTP/3 download of the same number of
/// bytes as our run, split over the same number of streams. Programs nobody
/// here wrote, so they anchor what "fast for ngtcp2" means on this machine.
final class StockNgtcp2Download {
    private let server: ChildProcess
    private let port: UInt16
    private let files: Int
    private let totalBytes: Int
    private let directory: String

    enum Failure: Error, CustomStringConvertible {
        case missing(String)
        case failed(String)
        var description: String {
            switch self {
            case .missing(let tool): return "\(tool) not found (install Debian's ngtcp2-server and ngtcp2-client)"
            case .failed(let what): return what
            }
        }
    }

    static func locate(_ name: String) -> String? {
        for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
            let path = dir + "/" + name
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    init(pki: CertificateAuthority.Layout, totalBytes: Int, files: Int) throws {
        guard let serverPath = Self.locate("gtlsserver") else { throw Failure.missing("gtlsserver") }
        guard Self.locate("gtlsclient") != nil else { throw Failure.missing("gtlsclient") }
        self.files = files
        self.totalBytes = totalBytes
        directory = pki.directory + "/../www"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let block = Data(repeating: 0xa5, count: totalBytes / files)
        for i in 0..<files {
            try block.write(to: URL(fileURLWithPath: directory + "/f\(i)"))
        }
        port = UInt16.random(in: 20000...60000)
        let files = pki.files(for: "bench-server")
        server = try ChildProcess(serverPath, ["-q", "-d", directory, "127.0.0.1", String(port), files.key, files.certificate])
        usleep(300_000)
        guard server.isRunning else { throw Failure.failed("gtlsserver exited at start") }
    }

    /// MB/s of one download of all files, process start to exit.
    func measure() throws -> Double {
        let start = monotonicNanoseconds()
        let client = try ChildProcess(Self.locate("gtlsclient")!,
                                      ["-q", "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close",
                                       "127.0.0.1", String(port)] + (0..<files).map { "https://127.0.0.1:\(port)/f\($0)" })
        let status = client.wait()
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        guard status == 0 else { throw Failure.failed("gtlsclient exited with status \(status)") }
        return Double(totalBytes / files * files) / seconds / 1e6
    }

    func stop() {
        server.terminate()
    }
}
