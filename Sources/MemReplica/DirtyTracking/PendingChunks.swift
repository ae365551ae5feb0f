import BitCollections

/// A set of chunk indices: what one subscriber of a shared tracker has yet
/// to take.
struct PendingChunks: Sendable {
    private var chunks: BitSet

    init(chunkCount: Int) {
        chunks = BitSet(reservingCapacity: chunkCount)
    }

    var isEmpty: Bool { chunks.isEmpty }

    mutating func insert(_ chunks: some Sequence<Int>) {
        self.chunks.formUnion(chunks)
    }

    /// Every chunk in the set, ascending; empties the set.
    mutating func takeAll() -> [Int] {
        guard !chunks.isEmpty else { return [] }
        defer { chunks = BitSet() }
        return Array(chunks)
    }
}
