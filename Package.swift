// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "memreplica",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MemReplica", targets: ["MemReplica"]),
        .executable(name: "memreplica", targets: ["memreplica"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.10.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // C: only what Swift cannot say. ngtcp2, GnuTLS and nghttp3 here;
        // Linux interfaces in LinuxShim; OpenSSL for the TLS/TCP transports.
        .target(
            name: "QuicShim",
            // Only for the system headers: through LinuxShim's module, so
            // that one Clang module owns <sys/socket.h>'s declarations
            // (SOCK_STREAM ...) whichever module a build meets first.
            dependencies: ["LinuxShim"],
            cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])],
            linkerSettings: [
                .linkedLibrary("ngtcp2_crypto_gnutls"),
                .linkedLibrary("ngtcp2"),
                .linkedLibrary("nghttp3"),
                .linkedLibrary("gnutls"),
            ]
        ),
        .target(
            name: "LinuxShim",
            cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])]
        ),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl"),
        // zstd and lz4 for chunk pages on the wire.
        .systemLibrary(name: "CCompression"),

        // System: the event loop's poller, locks, promises, sockets, processes.
        .target(
            name: "MemReplicaSystem",
            dependencies: [
                "LinuxShim",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Transport core: the protocols every transport implements, identity,
        // limits and budgets, statistics types, the shared stream machinery.
        .target(
            name: "MemReplicaTransportCore",
            dependencies: [
                "MemReplicaSystem",
                "LinuxShim",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // Transports: QUIC (ngtcp2 + GnuTLS) and TLS over TCP (OpenSSL).
        .target(
            name: "MemReplicaQUIC",
            dependencies: [
                "MemReplicaTransportCore",
                "MemReplicaSystem",
                "QuicShim",
                "LinuxShim",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "MemReplicaTCP",
            dependencies: [
                "MemReplicaTransportCore",
                "MemReplicaSystem",
                "COpenSSL",
                "LinuxShim",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // HTTP/3 (nghttp3) on a QUIC endpoint, through its application hook.
        .target(
            name: "MemReplicaHTTP3",
            dependencies: [
                "MemReplicaQUIC",
                "MemReplicaTransportCore",
                "MemReplicaSystem",
                "QuicShim",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The library applications link: protocol, regions, dirty tracking,
        // post-copy, replication, peer, control socket, statistics.
        .target(
            name: "MemReplica",
            dependencies: [
                "MemReplicaHTTP3",
                "MemReplicaQUIC",
                "MemReplicaTCP",
                "MemReplicaTransportCore",
                "MemReplicaSystem",
                "LinuxShim",
                "CCompression",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "BitCollections", package: "swift-collections"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // Outside the library product: the packet-level WAN emulator and the
        // benchmarks.
        .target(
            name: "MemReplicaWAN",
            dependencies: [
                "MemReplicaSystem",
                "MemReplicaTransportCore",
                "LinuxShim",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "MemReplicaBench",
            dependencies: [
                "MemReplica",
                "MemReplicaWAN",
                "MemReplicaQUIC",
                "MemReplicaTCP",
                "MemReplicaTransportCore",
                "MemReplicaSystem",
                "QuicShim",
                "LinuxShim",
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "memreplica",
            dependencies: [
                "MemReplica",
                "MemReplicaBench",
                "MemReplicaWAN",
                "MemReplicaTransportCore",
                "MemReplicaSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "MemReplicaTests",
            dependencies: ["MemReplica", "MemReplicaBench", "MemReplicaWAN", "MemReplicaHTTP3", "MemReplicaQUIC",
                           "MemReplicaTCP", "MemReplicaTransportCore", "MemReplicaSystem",
                           "QuicShim", "LinuxShim", "COpenSSL",
                           .product(name: "Crypto", package: "swift-crypto"),
                           .product(name: "X509", package: "swift-certificates")],
            // Expected outputs the tests compare with (bench wan's result files).
            resources: [.copy("Golden")]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// libFuzzer targets (Fuzz/), declared only when MEMREPLICA_FUZZ is set:
// scripts/fuzz.sh sets it and builds them with -sanitize=fuzzer,address in
// .build-fuzz, so the normal build and test run never compile them.
if Context.environment["MEMREPLICA_FUZZ"] != nil {
    package.targets.append(.executableTarget(
        name: "memreplica-fuzz",
        dependencies: ["MemReplica", "MemReplicaBench", "MemReplicaHTTP3", "MemReplicaQUIC", "MemReplicaTCP", "MemReplicaTransportCore",
                       "MemReplicaSystem", "QuicShim", "LinuxShim", .product(name: "Logging", package: "swift-log")],
        path: "Fuzz/Sources"
    ))
    package.products.append(.executable(name: "memreplica-fuzz", targets: ["memreplica-fuzz"]))
}
