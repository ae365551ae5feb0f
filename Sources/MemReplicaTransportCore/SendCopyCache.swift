import LinuxShim
import MemReplicaSystem

/// Send copies freed by the transport, kept for the next writes of about
/// the same size.
///
/// Why: every write is copied into memory of its own (`OwnedBytes`), freed
/// when the peer has the bytes. At bulk sizes glibc hands that memory back
/// to the kernel and takes it again for the next write, so the copy paid a
/// page fault and a page clearing per 4 KiB; a profile of a QUIC bulk
/// transfer put 17 % of the CPU there, most of it under `StreamCore.write`.
///
/// Bounded and idle-empty: it holds at most `limit` bytes, and everything
/// it holds is freed once the budget has no send copy in flight
/// (`MemoryBudget.release`), so a peer that stopped sending keeps nothing.
/// Copies below `smallest` bytes come from malloc, which reuses small
/// blocks well; above `largest`, likewise (rare: writes are chunk-sized).
///
/// Any holder may still free a copy with `deallocate()` instead of giving
/// it back: only the hot paths recycle (a stream's acknowledged bytes).
package final class SendCopyCache: Sendable {
    package static let granule = 16 << 10
    package static let smallest = granule
    package static let largest = 4 << 20
    /// The most bytes kept.
    package let limit: Int

    private struct State {
        /// Free blocks by size class: class i holds blocks of at least
        /// (i + 1) × granule bytes.
        var free = [[UInt]](repeating: [], count: SendCopyCache.largest / SendCopyCache.granule)
        var held = 0
        var reused: UInt64 = 0
        var made: UInt64 = 0
        var kept: UInt64 = 0
    }
    private let state = Locked(State())

    package init(limit: Int) {
        self.limit = limit
    }

    /// Memory for `count` bytes: a kept block of the right class, or a new one.
    package func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        guard count >= Self.smallest, count <= Self.largest else {
            return .allocate(byteCount: count, alignment: 16)
        }
        let index = (count + Self.granule - 1) / Self.granule - 1
        let reused = state.withLock { s -> UInt? in
            guard let block = s.free[index].popLast() else { s.made += 1; return nil }
            s.held -= (index + 1) * Self.granule
            s.reused += 1
            return block
        }
        if let reused, let base = UnsafeMutableRawPointer(bitPattern: reused) {
            return UnsafeMutableRawBufferPointer(start: base, count: count)
        }
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: (index + 1) * Self.granule, alignment: 16)
        return UnsafeMutableRawBufferPointer(rebasing: block[..<count])
    }

    /// The transport's own copy of `bytes` (see `OwnedBytes`).
    package func copy(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let memory = take(bytes.count)
        memory.copyMemory(from: bytes)
        return memory
    }

    /// A frame header and the bytes that follow it, in one copy.
    package func copy(header: [UInt8], body: UnsafeRawBufferPointer) -> UnsafeMutableRawBufferPointer {
        let memory = take(header.count + body.count)
        memory.copyBytes(from: header)
        UnsafeMutableRawBufferPointer(rebasing: memory[header.count...]).copyMemory(from: body)
        return memory
    }

    /// Keeps `memory` (from `take`, or any whole block from malloc: Swift's
    /// `allocate` with alignment up to 16, as every send copy is) for a
    /// later `take`, or frees it when the cache is full.
    package func give(_ memory: UnsafeMutableRawBufferPointer) {
        guard let base = memory.baseAddress else { return }
        // The block's real size: a copy made elsewhere, or for a smaller
        // count, files under the class it can serve.
        let size = malloc_usable_size(base)
        guard size >= Self.smallest else { memory.deallocate(); return }
        let index = min(size, Self.largest) / Self.granule - 1
        let bytes = (index + 1) * Self.granule
        let kept = state.withLock { s -> Bool in
            guard s.held + bytes <= limit else { return false }
            s.free[index].append(UInt(bitPattern: base))
            s.held += bytes
            s.kept += 1
            return true
        }
        if !kept { memory.deallocate() }
    }

    /// Frees every kept block (nothing is in flight any more).
    package func empty() {
        let blocks = state.withLock { s -> [UInt] in
            guard s.held > 0 else { return [] }
            defer {
                for i in s.free.indices { s.free[i].removeAll(keepingCapacity: true) }
                s.held = 0
            }
            return s.free.flatMap { $0 }
        }
        for block in blocks { UnsafeMutableRawPointer(bitPattern: block)?.deallocate() }
    }

    /// Bytes kept now; copies served from kept blocks, newly made, and
    /// blocks given back and kept.
    package var statistics: (held: Int, reused: UInt64, made: UInt64, kept: UInt64) {
        state.withLock { ($0.held, $0.reused, $0.made, $0.kept) }
    }
}
