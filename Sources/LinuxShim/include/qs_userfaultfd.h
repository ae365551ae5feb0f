/*
 * userfaultfd and PAGEMAP_SCAN, as far as Swift cannot express them: the
 * ioctl request numbers are _IOWR(...) macros, ioctl(2) and syscall(2) are
 * varargs, uffd_msg is a union, and Debian's 6.1 kernel headers predate
 * PAGEMAP_SCAN (Linux 6.7) and the WP_UNPOPULATED/WP_ASYNC features, so
 * those structs and bits are defined here with a QS_/qs_ prefix (they are
 * kernel ABI: the layout below is fixed).
 *
 * One convention for every function here: a non-negative result (0, a
 * descriptor or a count) on success, -errno on failure. errno itself is
 * left to whatever the calls set; callers read the return value only.
 *
 * No logic lives here: MemReplicaSystem's UserFaultFD drives it, for the
 * post-copy fault handler (MISSING faults) and the exact dirty tracker
 * (WP_ASYNC write-protection read with PAGEMAP_SCAN) alike.
 */
#ifndef QS_USERFAULTFD_H
#define QS_USERFAULTFD_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* uffdio_api.features bits (some newer than the installed headers). */
#define QS_UFFD_FEATURE_MISSING_SHMEM 0x20ULL        /* 1 << 5, Linux 4.11 */
#define QS_UFFD_FEATURE_WP_HUGETLBFS_SHMEM 0x1000ULL /* 1 << 12, Linux 5.19 */
#define QS_UFFD_FEATURE_WP_UNPOPULATED 0x2000ULL     /* 1 << 13, Linux 6.4 */
#define QS_UFFD_FEATURE_WP_ASYNC 0x8000ULL           /* 1 << 15, Linux 6.7 */

/* uffdio_register.mode. */
#define QS_UFFDIO_REGISTER_MODE_MISSING 0x1ULL
#define QS_UFFDIO_REGISTER_MODE_WP 0x2ULL
/* Bits of uffdio_register.ioctls: what the registered range allows. */
#define QS_UFFDIO_COPY_ALLOWED 0x8ULL          /* 1 << _UFFDIO_COPY */
#define QS_UFFDIO_WAKE_ALLOWED 0x4ULL          /* 1 << _UFFDIO_WAKE */
#define QS_UFFDIO_WRITEPROTECT_ALLOWED 0x40ULL /* 1 << _UFFDIO_WRITEPROTECT */

/* A new userfaultfd, non-blocking and close-on-exec, handling user-mode
 * faults only when `user_mode_only`. Tried in this order:
 *   1. /dev/userfaultfd (USERFAULTFD_IOC_NEW, Linux 6.1): its file mode is
 *      the administrator's grant, it handles kernel-mode faults too without
 *      CAP_SYS_PTRACE or vm.unprivileged_userfaultfd, and it works where a
 *      seccomp filter (a container's) refuses or kills the syscall;
 *   2. the userfaultfd(2) syscall: kernels without the device, containers
 *      without the node; allowed to root, or to anyone when
 *      vm.unprivileged_userfaultfd is 1.
 * On failure returns the syscall's -errno; `device_error`, when not NULL,
 * gets the device's -errno (0 when the device gave the descriptor). */
int qs_uffd_open_ex(int user_mode_only, int *device_error);
/* qs_uffd_open_ex without the device's error. */
int qs_uffd_open(int user_mode_only);

/* UFFDIO_API handshake asking for `features` (once per descriptor);
 * `available`, when not NULL, gets every feature the kernel offers. */
int qs_uffd_api(int fd, uint64_t features, uint64_t *available);

/* QS_UFFD_FEATURE_MISSING_SHMEM, as a function. */
uint64_t qs_uffd_feature_missing_shmem(void);

/* UFFDIO_REGISTER of [start, start+length) in `mode` (QS_UFFDIO_REGISTER_
 * MODE_*); `ioctls`, when not NULL, gets the QS_UFFDIO_*_ALLOWED bits. */
int qs_uffd_register(int fd, void *start, size_t length, uint64_t mode, uint64_t *ioctls);
/* qs_uffd_register for MISSING faults; -ENOTSUP when the range does not
 * allow UFFDIO_COPY. */
int qs_uffd_register_missing(int fd, void *start, size_t length);
int qs_uffd_unregister(int fd, void *start, size_t length);

/* UFFDIO_COPY of `length` bytes to `dst` (page aligned), waking faulting
 * threads. `copied` gets the bytes installed, also on -EEXIST (a page of
 * the range was already present). */
int qs_uffd_copy(int fd, void *dst, const void *src, size_t length, int64_t *copied);

/* UFFDIO_WAKE on a range without installing anything. */
int qs_uffd_wake(int fd, void *start, size_t length);

/* UFFDIO_WRITEPROTECT of a range registered in WP mode: protects it when
 * `protect`, else lifts the protection. */
int qs_uffd_writeprotect(int fd, void *start, size_t length, int protect);

/* Reads pending events; returns how many page-fault addresses went into
 * `addresses` (at most `capacity`), 0 when none are pending (EAGAIN). Other
 * event kinds are skipped. */
int qs_uffd_read_faults(int fd, uint64_t *addresses, int capacity);

/* ---- PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7) ------------------ */

#define QS_PM_SCAN_WP_MATCHING 0x1ULL   /* write-protect the pages reported */
#define QS_PM_SCAN_CHECK_WPASYNC 0x2ULL /* fail unless every VMA is WP_ASYNC */
#define QS_PAGE_IS_WPALLOWED 0x1ULL
#define QS_PAGE_IS_WRITTEN 0x2ULL

struct qs_page_region {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};

struct qs_pm_scan_arg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};

/* PAGEMAP_SCAN on an open /proc/<pid>/pagemap: the number of regions
 * written into arg->vec. */
long qs_pagemap_scan(int pagemap_fd, struct qs_pm_scan_arg *arg);

#ifdef __cplusplus
}
#endif

#endif
