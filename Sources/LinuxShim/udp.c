/* See linuxshim.h: UDP GSO/GRO control messages and memfd_create, which
 * Swift's Glibc module cannot express (CMSG_* are macros; memfd_create is
 * declared only under _GNU_SOURCE). */
#define _GNU_SOURCE
#include "linuxshim.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* ---- UDP cmsg helpers ------------------------------------------------- */

ssize_t qs_udp_send(int fd, const uint8_t *buf, size_t len, size_t segsize,
                    const struct sockaddr *addr, socklen_t addrlen) {
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  ssize_t n;

  memset(&msg, 0, sizeof(msg));
  msg.msg_name = (void *)addr;
  msg.msg_namelen = addrlen;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (segsize > 0 && segsize < len) {
    struct cmsghdr *cm;
    uint16_t seg = (uint16_t)segsize;
    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(seg));
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
  }
  do {
    n = sendmsg(fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  return n;
}

ssize_t qs_udp_recv(int fd, uint8_t *buf, size_t cap,
                    struct sockaddr_storage *from, socklen_t *fromlen,
                    size_t *segsize) {
  struct iovec iov = {.iov_base = buf, .iov_len = cap};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr msg;
  struct cmsghdr *cm;
  ssize_t n;

  memset(&msg, 0, sizeof(msg));
  msg.msg_name = from;
  msg.msg_namelen = sizeof(*from);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);
  *segsize = 0;
  do {
    n = recvmsg(fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return n;
  }
  *fromlen = msg.msg_namelen;
  for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
      int gso = 0;
      memcpy(&gso, CMSG_DATA(cm), sizeof(gso));
      *segsize = (size_t)gso;
    }
  }
  return n;
}

int qs_udp_enable_gro(int fd) {
  int on = 1;
  return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on));
}

/* ---- memory ------------------------------------------------------------ */

int qs_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }
