/*
 * Descriptor passing on Unix sockets for the control socket's attach
 * sessions: SCM_RIGHTS needs the CMSG_* macros and SO_PEERCRED's
 * struct ucred needs _GNU_SOURCE, neither of which Swift can import.
 * Each call returns a count or 0 on success and -errno on failure.
 */
#ifndef QS_UNIXFD_H
#define QS_UNIXFD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* recvmsg() of up to `length` bytes, without blocking. Descriptors passed
 * with them (SCM_RIGHTS, close-on-exec) go to `fds` (at most `capacity`,
 * the rest are closed); `*fd_count` gets how many. `*truncated` is set
 * when the kernel dropped descriptors (more than the control buffer held).
 * Returns the bytes read (0 at end of stream). */
long qs_recv_with_fds(int sock, void *buffer, size_t length, int *fds, int capacity, int *fd_count,
                      int *truncated);

/* sendmsg() of `length` bytes with descriptor `fd` attached (none when
 * fd < 0), MSG_NOSIGNAL. Returns the bytes sent. */
long qs_send_with_fd(int sock, const void *buffer, size_t length, int fd);

/* The process id of the other end of a connected Unix socket (SO_PEERCRED,
 * taken by the kernel at connect time), or -errno. */
long qs_peer_pid(int sock);

#ifdef __cplusplus
}
#endif

#endif
