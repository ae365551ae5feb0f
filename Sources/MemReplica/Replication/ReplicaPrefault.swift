import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Allocates a new replica's pages on a thread of its own, a little ahead
/// of the data arriving, so the receive path copies into memory that is
/// already there (page clearing off the loop's core).
///
/// It follows the data rather than the region's size: only bytes up to
/// `lookahead` past the furthest chunk that arrived with content are
/// allocated. Zero chunks allocate nothing on a new replica (its file is
/// zeros already), so a mostly zero region, a fresh VM's memory or a
/// sparse image, takes memory only for what it holds, and its sync does
/// not wait for the host to hand out pages nobody writes.
final class ReplicaPrefault: @unchecked Sendable {
    /// How far ahead of the data pages are made: one step of the thread.
    static let lookahead = 64 << 20

    private let region: Region
    private let condition = NSCondition()
    // Guarded by `condition`: the furthest chunk stored with content.
    private var furthest = 0..<0
    private var stopped = false

    private init(region: Region) {
        self.region = region
    }

    /// Starts the thread; nil when the region is larger than half the
    /// memory free now (the stream itself then allocates what it fills).
    static func start(for region: Region) -> ReplicaPrefault? {
        let free = sysconf(Int32(_SC_AVPHYS_PAGES)) * sysconf(Int32(_SC_PAGESIZE))
        guard free > 0, region.geometry.size <= free / 2 else { return nil }
        let prefault = ReplicaPrefault(region: region)
        let thread = Thread { prefault.run() }
        thread.name = "prefault \(region.name)"
        thread.start()
        return prefault
    }

    /// A chunk with content was stored at `range` (bytes of the region).
    func dataArrived(at range: Range<Int>) {
        condition.lock()
        if range.upperBound > furthest.upperBound {
            furthest = range
            condition.signal()
        }
        condition.unlock()
    }

    /// Ends the thread (the initial sync is over, or the run ended).
    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        let size = region.geometry.size
        // Pages below `done` are made, or were skipped as a gap the data
        // jumped over (zero chunks: nothing to make).
        var done = 0
        while done < size {
            condition.lock()
            // Wait for data, then until it comes within half a lookahead
            // of what is made.
            while !stopped && (furthest.isEmpty || furthest.upperBound + Self.lookahead / 2 <= done) {
                condition.wait()
            }
            let (data, stop) = (furthest, stopped)
            condition.unlock()
            if stop { return }
            let target = min(size, data.upperBound + Self.lookahead)
            let from = max(done, data.lowerBound)
            guard from >= target || region.populate(from..<target) else { return }
            done = target
        }
    }
}
