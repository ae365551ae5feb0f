#include "qs_userfaultfd.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int qs_uffd_open(int user_mode_only) {
    int flags = O_CLOEXEC | O_NONBLOCK | (user_mode_only ? UFFD_USER_MODE_ONLY : 0);
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd >= 0) return fd;
    /* Without vm.unprivileged_userfaultfd the device node still works. */
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return -errno;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    int saved = errno;
    close(dev);
    return fd >= 0 ? fd : -saved;
}

int qs_uffd_api(int fd, uint64_t features, uint64_t *available) {
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(fd, UFFDIO_API, &api) != 0) return -errno;
    if (available) *available = api.features;
    return 0;
}

uint64_t qs_uffd_feature_missing_shmem(void) { return UFFD_FEATURE_MISSING_SHMEM; }
uint64_t qs_uffd_feature_thread_id(void) { return UFFD_FEATURE_THREAD_ID; }

int qs_uffd_register_missing(int fd, void *start, size_t length) {
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)(uintptr_t)start, .len = length},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) return -errno;
    if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_COPY))) return -ENOTSUP;
    return 0;
}

int qs_uffd_unregister(int fd, void *start, size_t length) {
    struct uffdio_range range = {.start = (uint64_t)(uintptr_t)start, .len = length};
    return ioctl(fd, UFFDIO_UNREGISTER, &range) == 0 ? 0 : -errno;
}

int qs_uffd_copy(int fd, void *dst, const void *src, size_t length, int64_t *copied) {
    struct uffdio_copy copy = {
        .dst = (uint64_t)(uintptr_t)dst,
        .src = (uint64_t)(uintptr_t)src,
        .len = length,
        .mode = 0,
    };
    int rc = ioctl(fd, UFFDIO_COPY, &copy);
    int saved = errno;
    if (copied) *copied = copy.copy;
    return rc == 0 ? 0 : -saved;
}

int qs_uffd_wake(int fd, void *start, size_t length) {
    struct uffdio_range range = {.start = (uint64_t)(uintptr_t)start, .len = length};
    return ioctl(fd, UFFDIO_WAKE, &range) == 0 ? 0 : -errno;
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
