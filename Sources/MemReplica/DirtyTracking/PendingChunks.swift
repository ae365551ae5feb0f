/// A set of chunk indices as a bitmap: what one subscriber of a shared
/// tracker has yet to take.
struct PendingChunks: Sendable {
    private var words: [UInt64]
    private(set) var isEmpty = true

    init(chunkCount: Int) {
        words = [UInt64](repeating: 0, count: (chunkCount + 63) / 64)
    }

    mutating func insert(_ chunks: some Sequence<Int>) {
        for c in chunks {
            words[c >> 6] |= 1 << UInt64(c & 63)
            isEmpty = false
        }
    }

    mutating func insertAll(chunkCount: Int) {
        insert(0..<chunkCount)
    }

    /// Every chunk in the set, ascending; empties the set.
    mutating func takeAll() -> [Int] {
        guard !isEmpty else { return [] }
        var out: [Int] = []
        for w in words.indices where words[w] != 0 {
            var bits = words[w]
            while bits != 0 {
                out.append(w << 6 | bits.trailingZeroBitCount)
                bits &= bits - 1
            }
            words[w] = 0
        }
        isEmpty = true
        return out
    }
}
