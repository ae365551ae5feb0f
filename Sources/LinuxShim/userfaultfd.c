/* See qs_userfaultfd.h: ioctl and syscall wrappers, nothing else. Every
 * function returns a non-negative value on success and -errno on failure. */
#define _GNU_SOURCE
#include "qs_userfaultfd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define QS_PAGEMAP_SCAN _IOWR('f', 16, struct qs_pm_scan_arg)

_Static_assert(sizeof(struct qs_pm_scan_arg) == 96, "pm_scan_arg is 12 u64s");
_Static_assert(sizeof(struct qs_page_region) == 24, "page_region is 3 u64s");
/* The header's copies of bits the installed kernel headers have. */
_Static_assert(QS_UFFD_FEATURE_MISSING_SHMEM == UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM");
_Static_assert(QS_UFFDIO_REGISTER_MODE_MISSING == UFFDIO_REGISTER_MODE_MISSING, "REGISTER_MODE_MISSING");
_Static_assert(QS_UFFDIO_REGISTER_MODE_WP == UFFDIO_REGISTER_MODE_WP, "REGISTER_MODE_WP");
_Static_assert(QS_UFFDIO_COPY_ALLOWED == (uint64_t)1 << _UFFDIO_COPY, "COPY");
_Static_assert(QS_UFFDIO_WAKE_ALLOWED == (uint64_t)1 << _UFFDIO_WAKE, "WAKE");
_Static_assert(QS_UFFDIO_WRITEPROTECT_ALLOWED == (uint64_t)1 << _UFFDIO_WRITEPROTECT, "WRITEPROTECT");

static inline int result(long rc) { return rc >= 0 ? (int)rc : -errno; }

static inline struct uffdio_range range_of(void *start, size_t length) {
    return (struct uffdio_range){.start = (uint64_t)(uintptr_t)start, .len = length};
}

int qs_uffd_open_ex(int user_mode_only, int *device_error) {
    int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
    int device = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    int from_device = device < 0 ? -errno : result(ioctl(device, USERFAULTFD_IOC_NEW, flags));
    if (device >= 0) close(device);
    if (device_error) *device_error = from_device < 0 ? from_device : 0;
    if (from_device >= 0) return from_device;
    return result(syscall(SYS_userfaultfd, flags));
}

int qs_uffd_open(int user_mode_only) { return qs_uffd_open_ex(user_mode_only, NULL); }

int qs_uffd_api(int fd, uint64_t features, uint64_t *available) {
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    int rc = result(ioctl(fd, UFFDIO_API, &api));
    if (rc == 0 && available) *available = api.features;
    return rc;
}

uint64_t qs_uffd_feature_missing_shmem(void) { return QS_UFFD_FEATURE_MISSING_SHMEM; }

int qs_uffd_register(int fd, void *start, size_t length, uint64_t mode, uint64_t *ioctls) {
    struct uffdio_register reg = {.range = range_of(start, length), .mode = mode};
    int rc = result(ioctl(fd, UFFDIO_REGISTER, &reg));
    if (rc == 0 && ioctls) *ioctls = reg.ioctls;
    return rc;
}

int qs_uffd_register_missing(int fd, void *start, size_t length) {
    uint64_t ioctls = 0;
    int rc = qs_uffd_register(fd, start, length, QS_UFFDIO_REGISTER_MODE_MISSING, &ioctls);
    if (rc != 0) return rc;
    return ioctls & QS_UFFDIO_COPY_ALLOWED ? 0 : -ENOTSUP;
}

int qs_uffd_unregister(int fd, void *start, size_t length) {
    struct uffdio_range range = range_of(start, length);
    return result(ioctl(fd, UFFDIO_UNREGISTER, &range));
}

int qs_uffd_copy(int fd, void *dst, const void *src, size_t length, int64_t *copied) {
    struct uffdio_copy copy = {
        .dst = (uint64_t)(uintptr_t)dst,
        .src = (uint64_t)(uintptr_t)src,
        .len = length,
        .mode = 0,
    };
    int rc = result(ioctl(fd, UFFDIO_COPY, &copy));
    if (copied) *copied = copy.copy;
    return rc;
}

int qs_uffd_wake(int fd, void *start, size_t length) {
    struct uffdio_range range = range_of(start, length);
    return result(ioctl(fd, UFFDIO_WAKE, &range));
}

int qs_uffd_writeprotect(int fd, void *start, size_t length, int protect) {
    struct uffdio_writeprotect wp = {
        .range = range_of(start, length),
        .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };
    return result(ioctl(fd, UFFDIO_WRITEPROTECT, &wp));
}

int qs_uffd_read_faults(int fd, uint64_t *addresses, int capacity) {
    struct uffd_msg messages[64];
    int max = capacity < 64 ? capacity : 64;
    if (max <= 0) return 0;
    ssize_t n = read(fd, messages, sizeof(messages[0]) * (size_t)max);
    if (n < 0) return errno == EAGAIN ? 0 : -errno;
    int count = 0;
    for (ssize_t i = 0; i < n / (ssize_t)sizeof(messages[0]); i++) {
        if (messages[i].event == UFFD_EVENT_PAGEFAULT) {
            addresses[count++] = messages[i].arg.pagefault.address;
        }
    }
    return count;
}

long qs_pagemap_scan(int pagemap_fd, struct qs_pm_scan_arg *arg) {
    long rc = ioctl(pagemap_fd, QS_PAGEMAP_SCAN, arg);
    return rc >= 0 ? rc : -errno;
}
