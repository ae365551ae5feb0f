@testable import MemReplica
import Testing

/// When a subscription compresses, from the compressor's and the link's
/// measured rates and the content's ratio (`CompressionPolicy`).
@Suite("Compression policy")
struct CompressionPolicyTests {
    /// How many of the next `count` chunks the policy compresses, each
    /// compressed one measured at `ratio` and `compressorRate` bytes per
    /// CPU second.
    private func compressedChunks(_ policy: inout CompressionPolicy, count: Int, ratio: Double,
                                  compressorRate: Double = 500e6) -> Int {
        var n = 0
        for _ in 0..<count where policy.shouldCompress() {
            n += 1
            let raw = 65536
            policy.compressed(raw: raw, output: Int(Double(raw) * ratio), seconds: Double(raw) / compressorRate)
        }
        return n
    }

    @Test("before the link is measured, compressible chunks are compressed from the first")
    func unmeasuredLinkCompresses() {
        var policy = CompressionPolicy(codec: .lz4)
        #expect(compressedChunks(&policy, count: 100, ratio: 0.2) == 100)
    }

    @Test("a link slower than the compressor: every chunk compressed, however long the pass")
    func slowLinkKeepsCompressing() {
        var policy = CompressionPolicy(codec: .zstd)
        for _ in 0..<50 {
            policy.link(bytesPerSecond: 125e6)
            #expect(compressedChunks(&policy, count: 200, ratio: 0.2) == 200)
        }
    }

    @Test("a link faster than the compressor: only one chunk in probeInterval, which keeps the rates current")
    func fastLinkProbesOnly() {
        var policy = CompressionPolicy(codec: .lz4)
        _ = compressedChunks(&policy, count: 10, ratio: 0.2)
        policy.link(bytesPerSecond: 4e9)
        let n = compressedChunks(&policy, count: 32 * 100, ratio: 0.2)
        #expect(n == 100)
        // The link slows (the WAN behind a loopback test, a busier path): on again.
        policy.link(bytesPerSecond: 100e6)
        #expect(compressedChunks(&policy, count: 100, ratio: 0.2) == 100)
    }

    @Test("incompressible content is probed one chunk in probeInterval, even on a slow link, and noticed when it changes")
    func incompressibleProbesOnly() {
        var policy = CompressionPolicy(codec: .zstd)
        policy.link(bytesPerSecond: 125e6)
        // The moving ratio starts at 0.5: a few attempts take it above 0.9.
        _ = compressedChunks(&policy, count: 20, ratio: 1.0)
        #expect(policy.ratio >= CompressionPolicy.worthwhileRatio)
        #expect(compressedChunks(&policy, count: 32 * 50, ratio: 1.0) == 50)
        // Text arrives: a handful of probes bring the ratio down, then every chunk.
        _ = compressedChunks(&policy, count: 32 * 10, ratio: 0.2)
        #expect(compressedChunks(&policy, count: 100, ratio: 0.2) == 100)
    }

    @Test("a compressor slower than the link is left off, and a mirror that takes no codec never gets one")
    func slowCompressorAndNoCodec() {
        var policy = CompressionPolicy(codec: .zstd)
        _ = compressedChunks(&policy, count: 10, ratio: 0.3, compressorRate: 80e6)
        policy.link(bytesPerSecond: 125e6)
        #expect(compressedChunks(&policy, count: 320, ratio: 0.3, compressorRate: 80e6) == 10)
        var none = CompressionPolicy(codec: .none)
        #expect(compressedChunks(&none, count: 1000, ratio: 0.1) == 0)
    }

    @Test("a rate the stream could not give leaves the last one")
    func missingRateKeepsLast() {
        var policy = CompressionPolicy(codec: .lz4)
        policy.link(bytesPerSecond: 125e6)
        policy.link(bytesPerSecond: nil)
        policy.link(bytesPerSecond: 0)
        #expect(policy.linkRate == 125e6)
    }
}
