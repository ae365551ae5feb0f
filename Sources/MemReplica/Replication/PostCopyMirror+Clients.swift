import MemReplicaSystem

/// Processes attached to a lazy replica: their faults are served like the
/// mirror's own, and a watchdog ends the session of any that waits on a
/// chunk which cannot come in time.
extension PostCopyMirror {
    /// Ends the sessions of attached processes that wait on a chunk which
    /// cannot come in time: the primary has been out of reach, or the
    /// chunk's install has kept failing, for `faultWaitLimit`. Called by
    /// the watchdog every `watchdogInterval`.
    func failStalledReaders(now: ContinuousClock.Instant = .now) {
        let limit = options.faultWaitLimit
        let doomed = state.withLock { s -> [(end: @Sendable (String) -> Void, reason: String)] in
            var out: [(end: @Sendable (String) -> Void, reason: String)] = []
            for (id, chunks) in s.clientWaits where !chunks.isEmpty {
                let reason: String
                if !s.running, now - s.idleSince >= limit {
                    reason = "chunks of '\(region.name)' could not be pulled: the primary has been out of reach for "
                        + "\(Int((now - s.idleSince).seconds)) s"
                } else if let stuck = chunks.compactMap({ s.retries[$0] }).min(by: { $0.since < $1.since }),
                          now - stuck.since >= limit {
                    reason = "chunks of '\(region.name)' could not be installed for \(Int((now - stuck.since).seconds)) s: "
                        + (s.installError ?? "install failed")
                } else {
                    continue
                }
                if let end = s.clientEnds.removeValue(forKey: id) { out.append((end, reason)) }
                s.clientWaits.removeValue(forKey: id)
                s.readersFailed += 1
            }
            return out
        }
        for (end, reason) in doomed { end(reason) }
    }

    /// How often the watchdog looks for stalled readers.
    static let watchdogInterval: Duration = .milliseconds(250)

    func startWatchdog() {
        Task { [weak self] in
            while true {
                try? await Task.sleep(for: Self.watchdogInterval)
                guard let self, !self.state.withLock({ $0.stopped }) else { return }
                self.failStalledReaders()
            }
        }
    }

    /// Processes attached now.
    public var attachedClients: Int { faults.clientCount }

    /// At most this many processes attached at once.
    public static let maxClients = 16

    /// Serves another process's faults too: it mapped the region's file at
    /// `base` (all `length` bytes from offset 0) and registered that mapping
    /// for MISSING faults on `userfaultfd`, which this mirror now owns.
    /// Returns what ends the attachment (it closes the descriptor).
    /// `end` ends the process's session with a reason (see
    /// `failStalledReaders`).
    public func attachClient(userfaultfd: Int32, base: UInt64, length: Int,
                             end: (@Sendable (String) -> Void)? = nil) throws -> @Sendable () -> Void {
        let mapping: AttachMapping
        do {
            mapping = try AttachMapping(base: base, length: length, regionSize: region.geometry.size)
        } catch {
            throw PostCopyError.badClientMapping("\(error)")
        }
        guard faults.clientCount < Self.maxClients else {
            throw PostCopyError.badClientMapping("too many attached processes (at most \(Self.maxClients))")
        }
        guard !state.withLock({ $0.stopped }),
              let id = faults.addClient(uffd: userfaultfd, base: mapping.base, length: mapping.length) else {
            throw PostCopyError.badClientMapping("the lazy replica has stopped, or cannot watch another userfaultfd (epoll_ctl)")
        }
        if let end { state.withLock { $0.clientEnds[id] = end } }
        let faults = self.faults
        let state = self.state
        return {
            state.withLock { s in
                s.clientEnds.removeValue(forKey: id)
                s.clientWaits.removeValue(forKey: id)
            }
            faults.removeClient(id)
        }
    }
}
