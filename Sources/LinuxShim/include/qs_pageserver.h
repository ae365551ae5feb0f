/*
 * The benchmarks' floor peer: a second process that answers requests for
 * bytes of a shared mapping over loopback UDP and TCP, with no crypto and
 * no framing beyond a 16-byte request. `bench faults` and `bench transport`
 * time the same round trips against it in the same run, so every
 * memreplica figure has a floor beside it. It is forked: Swift cannot run
 * code in a forked child of a threaded process (only async-signal-safe
 * calls are allowed there, and the child here makes nothing else).
 */
#ifndef QS_PAGESERVER_H
#define QS_PAGESERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A request: `length` bytes from `offset` of the served mapping. Both
 * little-endian; the answer is exactly those bytes (one datagram over UDP,
 * so at most 65000). An offset of UINT64_MAX ends the server. */
struct qs_page_request {
  uint64_t offset;
  uint64_t length;
};

struct qs_page_server {
  pid_t pid;
  uint16_t udp_port;
  uint16_t tcp_port;
};

/* Forks a child that serves `source` (`length` bytes of a MAP_SHARED
 * mapping, or of memory that does not change after the fork) on 127.0.0.1:
 * one UDP socket and one TCP listener (one connection at a time,
 * TCP_NODELAY). The child dies with its parent. Returns 0, or -errno. */
int qs_page_server_start(const void *source, size_t length, struct qs_page_server *server);

/* Ends the child and waits for it. Returns 0, or -errno. */
int qs_page_server_stop(const struct qs_page_server *server);

#ifdef __cplusplus
}
#endif

#endif
