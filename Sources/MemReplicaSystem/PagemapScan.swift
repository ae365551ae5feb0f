import LinuxShim
import SystemPackage

/// PAGEMAP_SCAN (Linux 6.7) on an open /proc/PID/pagemap: the pages a
/// WP_ASYNC registration saw written, as runs.
package enum PagemapScan {
    /// A run of pages: `start` and `end` addresses, `categories` bits.
    package typealias Run = qs_page_region

    /// One ioctl over [start, end): fills `runs` with the runs of pages
    /// written since they were last protected, ascending, and
    /// write-protects them again (atomically per page table entry). Fails
    /// unless every VMA in the range is registered WP_ASYNC. Returns how
    /// many runs it wrote, and where the walk stopped: with a full buffer,
    /// continue from there.
    package static func takeWritten(_ pagemap: FileDescriptor, from start: UInt64, to end: UInt64,
                                    into runs: UnsafeMutableBufferPointer<Run>) throws(Errno) -> (found: Int, walkEnd: UInt64) {
        var arg = qs_pm_scan_arg(
            size: UInt64(MemoryLayout<qs_pm_scan_arg>.size),
            flags: QS_PM_SCAN_WP_MATCHING | QS_PM_SCAN_CHECK_WPASYNC,
            start: start, end: end, walk_end: 0,
            vec: UInt64(UInt(bitPattern: runs.baseAddress)), vec_len: UInt64(runs.count),
            max_pages: 0, category_inverted: 0,
            category_mask: QS_PAGE_IS_WRITTEN, category_anyof_mask: 0, return_mask: QS_PAGE_IS_WRITTEN)
        let found = qs_pagemap_scan(pagemap.rawValue, &arg)
        guard found >= 0 else { throw Errno(rawValue: Int32(-found)) }
        return (found, arg.walk_end)
    }
}
