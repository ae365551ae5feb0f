import Foundation

/// `{"command":"attach", ...}` on the control socket: a process of this
/// host attaches its own mapping of a local region. Sent with a userfaultfd
/// (SCM_RIGHTS) on which the process registered its whole mapping, the
/// connection becomes a session that lasts until either side closes it.
/// Sent without one, it is a one-shot lookup (the answer tells the client
/// which file to map), and the connection closes after the answer.
public struct AttachRequest: Codable, Sendable, Equatable {
    public var command = "attach"
    public var region: String
    /// "primary" or "replica" when the client relies on one; a mismatch is refused.
    public var role: String?
    /// Start of the client's mapping of the whole region (offset 0) in its
    /// own address space, and its length: needed with a descriptor, refused
    /// without one. Checked before anything else (`AttachMapping`).
    public var base: UInt64?
    public var length: Int?

    public init(region: String, role: String? = nil, base: UInt64? = nil, length: Int? = nil) {
        self.region = region; self.role = role; self.base = base; self.length = length
    }
}

/// The peer's answer to `attach`.
public struct AttachAnswer: Codable, Sendable, Equatable {
    public var region: String
    /// "primary" or "replica".
    public var role: String
    /// A lazy (post-copy) replica: reads of missing chunks must go through
    /// a mapping registered for MISSING faults and attached.
    public var lazy: Bool
    /// What to map (a memfd is named as /proc/PID/fd/N of the peer).
    public var path: String
    public var size: Int
    public var chunkSize: Int
    /// True when the descriptor was taken: the session is live.
    public var attached: Bool
    /// For an attached writer of a primary: which writes the peer now sees.
    public var tracking: String?
    /// For a replica: whether its bytes are the primary's current ones now
    /// (false: incomplete or possibly stale, e.g. the primary is gone or a
    /// durable replica restarted before converging again).
    public var synced: Bool?

    public init(region: String, role: String, lazy: Bool, path: String, size: Int, chunkSize: Int,
                attached: Bool, tracking: String? = nil) {
        self.region = region; self.role = role; self.lazy = lazy; self.path = path; self.size = size
        self.chunkSize = chunkSize; self.attached = attached; self.tracking = tracking
    }
}

/// Who attaches: the descriptor it passed (owned by the receiver of this
/// value) and its process id as the kernel reported it (SO_PEERCRED).
public struct AttachingProcess: Sendable {
    public let pid: Int32
    public let userfaultfd: Int32?
    /// Ends this process's session from any thread, telling it why (one
    /// `{"error": ...}` line, then the socket closes): for a lazy reader
    /// whose chunk cannot come. Nil for a one-shot lookup.
    public let endSession: (@Sendable (String) -> Void)?

    public init(pid: Int32, userfaultfd: Int32?, endSession: (@Sendable (String) -> Void)? = nil) {
        self.pid = pid
        self.userfaultfd = userfaultfd
        self.endSession = endSession
    }
}

/// What an attach handler decides.
public enum AttachOutcome: Sendable {
    /// Answered; with `detach` the session stays open and `detach` runs
    /// once it ends (the descriptor is then the handler's to close);
    /// without, a descriptor that came along is closed by the server.
    case accepted(AttachAnswer, detach: (@Sendable () -> Void)?)
    /// Refused with a one-line reason; the descriptor is closed by the server.
    case refused(String)
}
