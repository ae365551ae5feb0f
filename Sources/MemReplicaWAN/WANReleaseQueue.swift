/// Delayed packets ordered by release time (a binary min-heap in a fixed
/// buffer, so no packet allocates), ties broken by arrival order so equal
/// release times keep FIFO order. Used by the forwarder thread only.
struct WANReleaseQueue: ~Copyable {
    struct Entry {
        var release: UInt64
        var sequence: UInt64
        var slot: Int32
    }

    private let heap: UnsafeMutablePointer<Entry>
    private let capacity: Int
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = capacity
        heap = .allocate(capacity: capacity)
    }

    deinit { heap.deallocate() }

    var first: Entry? { count > 0 ? heap[0] : nil }

    @inline(__always)
    private static func before(_ a: Entry, _ b: Entry) -> Bool {
        a.release != b.release ? a.release < b.release : a.sequence < b.sequence
    }

    /// The caller never holds more entries than packet slots, which is the capacity.
    mutating func push(_ entry: Entry) {
        precondition(count < capacity, "release queue overflow")
        var i = count
        count += 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.before(entry, heap[parent]) else { break }
            heap[i] = heap[parent]
            i = parent
        }
        heap[i] = entry
    }

    mutating func popFirst() -> Entry {
        let top = heap[0]
        count -= 1
        guard count > 0 else { return top }
        let last = heap[count]
        var i = 0
        while true {
            let left = 2 * i + 1
            guard left < count else { break }
            let right = left + 1
            let child = right < count && Self.before(heap[right], heap[left]) ? right : left
            guard Self.before(heap[child], last) else { break }
            heap[i] = heap[child]
            i = child
        }
        heap[i] = last
        return top
    }
}
