import DequeModule

/// A stream's received bytes waiting for its reader, in arrival order.
package struct ReceiveBuffer {
    /// Bytes arriving land in the newest chunk while it has room, so a bulk
    /// transfer allocates per `chunkSize`, not per packet or record.
    package static let chunkSize = 256 << 10

    private var chunks = Deque<[UInt8]>()
    /// How much of the oldest chunk was taken already.
    private var head = 0
    package private(set) var count = 0

    package init() {}

    package mutating func append(_ data: UnsafeRawBufferPointer) {
        guard data.count > 0 else { return }
        let last = chunks.count - 1
        if last >= 0, chunks[last].count + data.count <= Self.chunkSize {
            chunks[last].append(contentsOf: data)
        } else {
            var bytes = [UInt8]()
            bytes.reserveCapacity(max(data.count, Self.chunkSize))
            bytes.append(contentsOf: data)
            chunks.append(bytes)
        }
        count += data.count
    }

    /// Up to maxLength buffered bytes, oldest first.
    package mutating func take(maxLength: Int) -> [UInt8]? {
        guard count > 0, maxLength > 0 else { return nil }
        var out: [UInt8]
        let first = chunks[0]
        if head == 0 && first.count <= maxLength {
            out = first
            chunks.removeFirst()
            // Coalesce small chunks so one read returns what is there; a big
            // chunk is enough on its own and copying it costs.
            while out.count < 64 << 10, let next = chunks.first, out.count + next.count <= maxLength {
                out.append(contentsOf: next)
                chunks.removeFirst()
            }
        } else {
            let n = min(maxLength, first.count - head)
            out = Array(first[head..<head + n])
            head += n
            if head == first.count {
                chunks.removeFirst()
                head = 0
            }
        }
        count -= out.count
        return out
    }

    package mutating func removeAll() {
        chunks.removeAll()
        head = 0
        count = 0
    }
}
