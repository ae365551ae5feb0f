/*
 * memreplica client API for C (and any language with a C FFI): attach a
 * region of the local memreplica peer to this process.
 *
 *   memreplica_region r;
 *   char err[256];
 *   if (memreplica_attach("/path/to/control.sock", "db", 0, &r, err, sizeof err) != 0) { ... err ... }
 *   ... read r.base[0 .. r.size) ...
 *   memreplica_detach(&r);
 *
 * On a lazy (post-copy) replica the mapping is registered for userfaultfd
 * MISSING faults in this process and the descriptor is passed to the peer
 * (SCM_RIGHTS), which serves the faults: a read of a chunk that has not
 * arrived blocks the reading thread until the peer has pulled it.
 *
 * With `writable` on a primary, the mapping is registered for userfaultfd
 * write-protection (WP_ASYNC, Linux >= 6.7) and the peer finds exactly the
 * pages this process stores to (PAGEMAP_SCAN on /proc/PID/pagemap). Only
 * stores through r.base count: write()/pwrite() to the file do not.
 *
 * The attachment lasts until memreplica_detach() or the process's exit.
 * Not thread-safe for concurrent attach/detach of the same struct.
 *
 * A lazy replica's bytes are the primary's or an error, never holes: when
 * the peer cannot serve a chunk a thread waits on (the primary out of
 * reach, the chunk cannot be installed, the peer stopping), it ends the
 * session with a reason. A thread of this library then replaces the
 * mapping in place with private zero pages, which wakes the waiting
 * threads; memreplica_read() and memreplica_session_alive() report the
 * failure, so read through memreplica_read() (or check
 * memreplica_session_alive() after reading r.base directly) before
 * trusting bytes.
 */
#ifndef MEMREPLICA_CLIENT_H
#define MEMREPLICA_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct memreplica_region {
    /* The whole region, mapped MAP_SHARED (read-only unless writable). */
    unsigned char *base;
    size_t size;
    size_t chunk_size;
    /* 1 on a lazy replica. */
    int lazy;
    /* 1 on a primary, 0 on a replica. */
    int primary;
    /* Internal: the session socket and this process's userfaultfd (-1 if none). */
    int session;
    int uffd;
    size_t mapped_length;
    /* Internal: the lazy session's watcher (NULL without one). */
    struct memreplica_watch *watch;
} memreplica_region;

/* Attaches `region`. Returns 0, or -1 with a one-line reason in `error`. */
int memreplica_attach(const char *control_path, const char *region, int writable, memreplica_region *out,
                      char *error, size_t error_length);

/* Copies `length` bytes from `offset` of the region into `buffer`. Returns 0
 * when they are the region's bytes; -1 with a one-line reason in `error` when
 * the range is outside the region or the peer ended the session before the
 * copy finished (the buffer may then hold zeros the primary never wrote). */
int memreplica_read(memreplica_region *r, size_t offset, void *buffer, size_t length, char *error,
                    size_t error_length);

/* 1 while the peer serves this attachment (always 1 without a session), 0
 * once it ended the session; `reason` (may be NULL) gets why. */
int memreplica_session_alive(memreplica_region *r, char *reason, size_t reason_length);

/* Ends the attachment (waiting until the peer is done with the mapping) and
 * unmaps; a lazy replica's mapping becomes read-only zeros instead, its
 * address range reserved for good, so a thread still asleep in a fault wakes
 * reading zeros rather than crashing. Returns 0. */
int memreplica_detach(memreplica_region *r);

#ifdef __cplusplus
}
#endif

#endif
