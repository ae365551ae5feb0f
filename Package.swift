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
        .target(
            name: "QuicShim",
            cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])],
            linkerSettings: [
                .linkedLibrary("ngtcp2_crypto_gnutls"),
                .linkedLibrary("ngtcp2"),
                .linkedLibrary("nghttp3"),
                .linkedLibrary("gnutls"),
            ]
        ),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl"),
        .target(
            name: "MemReplica",
            dependencies: [
                "QuicShim",
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "memreplica",
            dependencies: [
                "MemReplica",
                "QuicShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "MemReplicaTests",
            dependencies: ["MemReplica", "QuicShim", "COpenSSL", .product(name: "Crypto", package: "swift-crypto"),
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
        dependencies: ["MemReplica", "QuicShim", .product(name: "Logging", package: "swift-log")],
        path: "Fuzz/Sources"
    ))
    package.products.append(.executable(name: "memreplica-fuzz", targets: ["memreplica-fuzz"]))
}
