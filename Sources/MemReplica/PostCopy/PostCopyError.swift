import SystemPackage

/// Why a lazy (post-copy) replica cannot run.
public enum PostCopyError: Error, CustomStringConvertible, Equatable {
    /// A userfaultfd call failed.
    case userfaultfd(call: String, errno: Errno)
    /// The kernel does not offer MISSING faults on shared memory.
    case missingShmemUnsupported
    /// userfaultfd MISSING faults exist only for anonymous and shared memory.
    case notSharedMemory(region: String)
    /// An attaching process's mapping does not fit the region.
    case badClientMapping(String)

    public var description: String {
        switch self {
        case .userfaultfd(let call, let e): return "userfaultfd \(call) failed: \(e)"
        case .missingShmemUnsupported: return "this kernel's userfaultfd has no MISSING faults on shared memory"
        case .notSharedMemory(let region):
            return "region '\(region)' is not shared memory: a lazy mirror needs a memfd or a file under /dev/shm"
        case .badClientMapping(let detail): return detail
        }
    }
}
