/*
 * LinuxShim: the Linux interfaces Swift's Glibc module cannot express or
 * does not export. No logic lives here; each header says what its Swift
 * caller is.
 *
 * - headers Glibc's module leaves out: epoll, eventfd, getrandom, statfs,
 *   malloc_trim, malloc_usable_size;
 * - userfaultfd and PAGEMAP_SCAN (qs_userfaultfd.h);
 * - SCM_RIGHTS descriptor passing (qs_unixfd.h);
 * - TUN devices, setns and timer slack for the WAN emulator (qs_wan.h);
 * - SIGBUS on region mappings, and fallocate (qs_regionguard.h);
 * - UDP GSO/GRO control messages and memfd_create (below).
 */
#ifndef LINUXSHIM_H
#define LINUXSHIM_H

#include <stddef.h>
#include <malloc.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/statfs.h>

#include "qs_regionguard.h"
#include "qs_unixfd.h"
#include "qs_userfaultfd.h"
#include "qs_wan.h"
#include "qs_pageserver.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- UDP cmsg helpers ------------------------------------------------- */

/* Sends buf as one datagram, or as len/segsize datagrams with UDP GSO when
 * segsize > 0 and segsize < len. Returns sendmsg's result (errno kept). */
ssize_t qs_udp_send(int fd, const uint8_t *buf, size_t len, size_t segsize,
                    const struct sockaddr *addr, socklen_t addrlen);

/* Receives into buf; *segsize is the GRO segment size (0 when the buffer
 * holds a single datagram). Returns recvmsg's result (errno kept). */
ssize_t qs_udp_recv(int fd, uint8_t *buf, size_t cap,
                    struct sockaddr_storage *from, socklen_t *fromlen,
                    size_t *segsize);

/* Turns on UDP GRO on fd; returns 0 when the kernel accepted it. */
int qs_udp_enable_gro(int fd);

/* ---- memory ------------------------------------------------------------ */

/* memfd_create(2) with MFD_CLOEXEC; glibc declares it only under
 * _GNU_SOURCE, which Swift's Glibc module is not built with. */
int qs_memfd_create(const char *name);

#ifdef __cplusplus
}
#endif

#endif
