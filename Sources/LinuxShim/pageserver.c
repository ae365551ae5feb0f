/* See qs_pageserver.h. The child calls only async-signal-safe functions. */
#define _GNU_SOURCE
#include "qs_pageserver.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sched.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* After each answer the server polls this long for the next request
 * before it sleeps, as memreplica's loops do (QUICConfiguration
 * .requestPollWindow): the floor gets the same help against wake-ups. */
#define QS_PAGE_SERVER_POLL_NS 300000ull

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int bound_socket(int type, uint16_t *port) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
      (type == SOCK_STREAM && listen(fd, 4) != 0) ||
      getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

/* The span a request names, or NULL when it is out of range. */
static const uint8_t *span(const uint8_t *source, size_t length, const struct qs_page_request *r) {
  if (r->offset > length || r->length > length - r->offset) return NULL;
  return source + r->offset;
}

static int read_full(int fd, void *buf, size_t n) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t got = read(fd, p, n);
    if (got <= 0) {
      if (got < 0 && errno == EINTR) continue;
      return -1;
    }
    p += got;
    n -= (size_t)got;
  }
  return 0;
}

static int write_full(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n > 0) {
    ssize_t put = write(fd, p, n);
    if (put <= 0) {
      if (put < 0 && errno == EINTR) continue;
      return -1;
    }
    p += put;
    n -= (size_t)put;
  }
  return 0;
}

static void serve(const uint8_t *source, size_t length, int udp, int listener) {
  int conn = -1;
  uint64_t poll_until = 0;
  for (;;) {
    struct pollfd fds[3] = {{.fd = udp, .events = POLLIN}, {.fd = listener, .events = POLLIN},
                            {.fd = conn, .events = POLLIN}};
    int polling = now_ns() < poll_until;
    int ready = poll(fds, conn >= 0 ? 3 : 2, polling ? 0 : -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (ready == 0) {
      sched_yield();
      continue;
    }
    poll_until = now_ns() + QS_PAGE_SERVER_POLL_NS;
    if (fds[0].revents & POLLIN) {
      struct qs_page_request r;
      struct sockaddr_in from;
      socklen_t fromlen = sizeof(from);
      ssize_t n = recvfrom(udp, &r, sizeof(r), 0, (struct sockaddr *)&from, &fromlen);
      if (n == (ssize_t)sizeof(r)) {
        if (r.offset == UINT64_MAX) return;
        const uint8_t *p = span(source, length, &r);
        if (p != NULL && r.length <= 65000) sendto(udp, p, r.length, 0, (struct sockaddr *)&from, fromlen);
      }
    }
    if (fds[1].revents & POLLIN) {
      int accepted = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
      if (accepted >= 0) {
        if (conn >= 0) close(conn);
        conn = accepted;
        int one = 1;
        setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      }
    }
    if (conn >= 0 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      struct qs_page_request r;
      const uint8_t *p = NULL;
      if (read_full(conn, &r, sizeof(r)) != 0 || r.offset == UINT64_MAX ||
          (p = span(source, length, &r)) == NULL || write_full(conn, p, r.length) != 0) {
        if (r.offset == UINT64_MAX) return;
        close(conn);
        conn = -1;
      }
    }
  }
}

int qs_page_server_start(const void *source, size_t length, struct qs_page_server *server) {
  int udp = bound_socket(SOCK_DGRAM, &server->udp_port);
  if (udp < 0) return udp;
  int listener = bound_socket(SOCK_STREAM, &server->tcp_port);
  if (listener < 0) {
    close(udp);
    return listener;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(udp);
    close(listener);
    return -e;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    serve(source, length, udp, listener);
    _exit(0);
  }
  close(udp);
  close(listener);
  server->pid = pid;
  return 0;
}

int qs_page_server_stop(const struct qs_page_server *server) {
  if (kill(server->pid, SIGKILL) != 0 && errno != ESRCH) return -errno;
  while (waitpid(server->pid, NULL, 0) < 0) {
    if (errno != EINTR) return -errno;
  }
  return 0;
}
