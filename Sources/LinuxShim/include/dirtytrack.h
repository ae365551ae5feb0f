/*
 * dirtytrack: the kernel interface of memreplica's exact dirty tracker
 * (userfaultfd write-protection in WP_ASYNC mode, read and reset with the
 * PAGEMAP_SCAN ioctl on /proc/self/pagemap), as far as Swift cannot
 * express it: ioctl request numbers are _IOWR(...) macros, ioctl(2) and
 * syscall(2) are varargs, and Debian's 6.1 kernel headers predate
 * PAGEMAP_SCAN (Linux 6.7) and the WP_UNPOPULATED/WP_ASYNC features, so
 * those structs and bits are defined here with a dt_ prefix (they are
 * kernel ABI: the layout below is fixed).
 *
 * No logic lives here: DirtyTracking/WriteProtectTracker.swift drives it.
 */
#ifndef DIRTYTRACK_H
#define DIRTYTRACK_H

#include <stdint.h>
#include <linux/userfaultfd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* UFFDIO_API version. */
#define DT_UFFD_API 0xAAULL

/* uffdio_api.features bits newer than the installed headers. */
#define DT_UFFD_FEATURE_WP_HUGETLBFS_SHMEM 0x1000ULL /* 1 << 12, Linux 5.19 */
#define DT_UFFD_FEATURE_WP_UNPOPULATED 0x2000ULL     /* 1 << 13, Linux 6.4 */
#define DT_UFFD_FEATURE_WP_ASYNC 0x8000ULL           /* 1 << 15, Linux 6.7 */

/* uffdio_register.mode, uffdio_writeprotect.mode. */
#define DT_UFFDIO_REGISTER_MODE_WP 0x2ULL
#define DT_UFFDIO_WRITEPROTECT_MODE_WP 0x1ULL
/* Bit in uffdio_register.ioctls saying UFFDIO_WRITEPROTECT is allowed. */
#define DT_UFFDIO_WRITEPROTECT_ALLOWED 0x40ULL /* 1 << _UFFDIO_WRITEPROTECT */

/* PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7). */
#define DT_PM_SCAN_WP_MATCHING 0x1ULL   /* write-protect the pages reported */
#define DT_PM_SCAN_CHECK_WPASYNC 0x2ULL /* fail unless every VMA is WP_ASYNC */
#define DT_PAGE_IS_WPALLOWED 0x1ULL
#define DT_PAGE_IS_WRITTEN 0x2ULL

struct dt_page_region {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};

struct dt_pm_scan_arg {
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

/* userfaultfd(2) (glibc has no wrapper); -1 and errno on failure. */
int dt_userfaultfd_syscall(int flags);
/* A new userfaultfd from an open /dev/userfaultfd (USERFAULTFD_IOC_NEW). */
int dt_userfaultfd_dev_new(int devfd, int flags);

/* The ioctls, each returning ioctl(2)'s result with errno kept. */
int dt_uffdio_api(int uffd, struct uffdio_api *api);
int dt_uffdio_register(int uffd, struct uffdio_register *reg);
int dt_uffdio_unregister(int uffd, struct uffdio_range *range);
int dt_uffdio_writeprotect(int uffd, struct uffdio_writeprotect *wp);
/* PAGEMAP_SCAN on an open /proc/<pid>/pagemap: the number of regions
 * written into arg->vec, or -1. */
long dt_pagemap_scan(int pagemap_fd, struct dt_pm_scan_arg *arg);

#ifdef __cplusplus
}
#endif

#endif
