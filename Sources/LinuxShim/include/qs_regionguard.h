/*
 * Region guard: turns a SIGBUS on a region's mapping (its file truncated by
 * another process, or a page its filesystem could not allocate) into a
 * flag on that region instead of the end of the process. Swift cannot
 * write a signal handler safely, so the handler and its registry live here.
 *
 * The handler, installed once per process, looks the faulting address up in
 * a fixed table of registered mappings (QS_GUARD_SLOTS, lock-free: each
 * slot is a small seqlock of atomics). Inside one, it maps a private zero
 * page over the faulting page (MAP_FIXED) so the access completes, and
 * counts the fault on that slot; the owner polls the count after every copy
 * out of the mapping and throws away what it copied. Outside every slot it
 * hands the signal to the handler it replaced, or restores the default
 * action and re-raises it (a core dump, as without the guard).
 *
 * Every call returns 0 (or an index) on success and -errno on failure.
 */
#ifndef QS_REGIONGUARD_H
#define QS_REGIONGUARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Mappings guarded at once per process; registering one more fails with
 * -ENOSPC. */
#define QS_GUARD_SLOTS 8192

/* Installs the SIGBUS handler (once; later calls do nothing) and registers
 * [start, start+length). Returns the slot for the calls below. */
int qs_guard_register(void *start, size_t length);

/* Forgets a slot (before its mapping is unmapped). */
void qs_guard_unregister(int slot);

/* SIGBUS faults caught in the slot's mapping since it was registered. */
uint64_t qs_guard_faults(int slot);

/* Address of the slot's first caught fault, 0 if none. */
uintptr_t qs_guard_first_fault(int slot);

/* Reserves the blocks of [offset, offset+length) of `fd` (fallocate(2),
 * mode 0: the file grows if it is shorter, bytes already there are kept).
 * -EOPNOTSUPP where the filesystem cannot. */
int qs_fallocate(int fd, int64_t offset, int64_t length);

/* lseek(2) with SEEK_DATA / SEEK_HOLE, which Glibc's module hides behind
 * _GNU_SOURCE: the first byte of data (of a hole) at or past `offset`.
 * -ENXIO: no data at or past `offset`. */
int64_t qs_seek_data(int fd, int64_t offset);
int64_t qs_seek_hole(int fd, int64_t offset);

#ifdef __cplusplus
}
#endif

#endif
