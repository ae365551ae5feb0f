/*
 * userfaultfd for post-copy replicas: the ioctl numbers are _IOWR macros
 * and uffd_msg is a union, neither of which Swift can import. Each call
 * returns 0 (or a count) on success and -errno on failure.
 */
#ifndef QS_USERFAULTFD_H
#define QS_USERFAULTFD_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A new userfaultfd (non-blocking, close-on-exec), through /dev/userfaultfd
 * or the syscall; user-mode faults only when `user_mode_only`. */
int qs_uffd_open(int user_mode_only);

/* UFFDIO_API handshake asking for `features`; `available` gets what the
 * kernel offers. */
int qs_uffd_api(int fd, uint64_t features, uint64_t *available);

/* Feature bits (from linux/userfaultfd.h, as plain values). */
uint64_t qs_uffd_feature_missing_shmem(void);
uint64_t qs_uffd_feature_thread_id(void);

/* UFFDIO_REGISTER of [start, start+length) for MISSING faults. */
int qs_uffd_register_missing(int fd, void *start, size_t length);
int qs_uffd_unregister(int fd, void *start, size_t length);

/* UFFDIO_COPY of `length` bytes to `dst` (page aligned), waking faulting
 * threads. `copied` gets the bytes installed, also on -EEXIST (a page of
 * the range was already present). */
int qs_uffd_copy(int fd, void *dst, const void *src, size_t length, int64_t *copied);

/* UFFDIO_WAKE on a range without installing anything. */
int qs_uffd_wake(int fd, void *start, size_t length);

/* Reads pending events; returns how many page-fault addresses went into
 * `addresses` (at most `capacity`), 0 when none are pending (EAGAIN). Other
 * event kinds are skipped. */
int qs_uffd_read_faults(int fd, uint64_t *addresses, int capacity);

#ifdef __cplusplus
}
#endif

#endif
