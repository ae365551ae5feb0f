import MemReplicaSystem

/// One timer for every region a `RegionExports` publishes: each tick scans
/// each followed region's tracker once and wakes only the publish loops
/// whose subscription the scan handed chunks. A loop of its own per region
/// woke 50 times a second whether or not anything changed: with 1024
/// regions that was 51 200 wake-ups a second, which took both cores of a
/// small host and starved the syncs (bench/RESULTS.md, Scale). Now an idle
/// region costs one tracker scan per tick (a PAGEMAP_SCAN ioctl over its
/// page tables) and no task switch.
///
/// Runs while anything is registered, on a task of its own.
final class ScanClock: Sendable {
    let interval: Duration
    private struct Entry {
        let changes: ChangeSubscription
        let trigger: PassTrigger
    }
    private struct State {
        var entries: [ObjectIdentifier: Entry] = [:]
        var running = false
    }
    private let state = Locked(State())

    init(interval: Duration) {
        self.interval = interval
    }

    /// Fires `trigger` (as scanned) on every tick whose scan left
    /// `changes` chunks to take, until `unregister`.
    func register(_ changes: ChangeSubscription, trigger: PassTrigger) {
        let start = state.withLock { s -> Bool in
            s.entries[ObjectIdentifier(trigger)] = Entry(changes: changes, trigger: trigger)
            defer { s.running = true }
            return !s.running
        }
        if start { Task { await self.run() } }
    }

    func unregister(_ trigger: PassTrigger) {
        state.withLock { _ = $0.entries.removeValue(forKey: ObjectIdentifier(trigger)) }
    }

    private func run() async {
        while true {
            try? await Task.sleep(for: interval)
            guard let entries = state.withLock({ s -> [Entry]? in
                guard !s.entries.isEmpty else {
                    s.running = false
                    return nil
                }
                return Array(s.entries.values)
            }) else { return }
            var scanned = Set<ObjectIdentifier>()
            for entry in entries {
                let feed = entry.changes.feed
                if scanned.insert(ObjectIdentifier(feed)).inserted { feed.scanForAll() }
                if entry.changes.hasPending { entry.trigger.fire(scanned: true) }
            }
        }
    }
}
