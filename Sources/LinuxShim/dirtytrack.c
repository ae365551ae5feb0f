/* See dirtytrack.h: ioctl and syscall wrappers, nothing else. */
#define _GNU_SOURCE
#include "dirtytrack.h"

#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DT_PAGEMAP_SCAN _IOWR('f', 16, struct dt_pm_scan_arg)

_Static_assert(sizeof(struct dt_pm_scan_arg) == 96, "pm_scan_arg is 12 u64s");
_Static_assert(sizeof(struct dt_page_region) == 24, "page_region is 3 u64s");

int dt_userfaultfd_syscall(int flags) { return (int)syscall(__NR_userfaultfd, flags); }

int dt_userfaultfd_dev_new(int devfd, int flags) { return ioctl(devfd, USERFAULTFD_IOC_NEW, flags); }

int dt_uffdio_api(int uffd, struct uffdio_api *api) { return ioctl(uffd, UFFDIO_API, api); }

int dt_uffdio_register(int uffd, struct uffdio_register *reg) { return ioctl(uffd, UFFDIO_REGISTER, reg); }

int dt_uffdio_unregister(int uffd, struct uffdio_range *range) { return ioctl(uffd, UFFDIO_UNREGISTER, range); }

int dt_uffdio_writeprotect(int uffd, struct uffdio_writeprotect *wp) {
  return ioctl(uffd, UFFDIO_WRITEPROTECT, wp);
}

long dt_pagemap_scan(int pagemap_fd, struct dt_pm_scan_arg *arg) { return ioctl(pagemap_fd, DT_PAGEMAP_SCAN, arg); }
