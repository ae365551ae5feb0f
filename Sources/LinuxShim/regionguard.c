#define _GNU_SOURCE
#include "qs_regionguard.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <unistd.h>

/* The handler reads these with plain atomic loads: they must not take a lock. */
_Static_assert(ATOMIC_POINTER_LOCK_FREE == 2, "pointer-sized atomics must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");

/* One registered mapping. `seq` is odd while `start`/`end` change, so the
 * handler never matches a half-written slot; `owner` hands slots out. */
struct guard_slot {
    atomic_uint owner;
    atomic_ullong seq;
    atomic_uintptr_t start;
    atomic_uintptr_t end;
    atomic_ullong faults;
    atomic_uintptr_t first_fault;
};

/* Process-wide by nature: a signal handler has no other way to find the
 * regions. Written only through the functions below. */
static struct guard_slot slots[QS_GUARD_SLOTS];
static struct sigaction previous;
static uintptr_t page_size;
static pthread_once_t installed = PTHREAD_ONCE_INIT;
static int install_error;

/* Not ours: the handler we replaced gets it, or the default action (which
 * for SIGBUS ends the process with a core). SIGBUS is blocked while this
 * handler runs, so the re-raised signal arrives as it returns. */
static void pass_on(int signal, siginfo_t *info, void *context) {
    if ((previous.sa_flags & SA_SIGINFO) != 0) {
        if (previous.sa_sigaction != NULL) {
            previous.sa_sigaction(signal, info, context);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(signal);
        return;
    }
    struct sigaction fallback = {.sa_handler = SIG_DFL};
    sigemptyset(&fallback.sa_mask);
    sigaction(SIGBUS, &fallback, NULL);
    raise(SIGBUS);
}

/* Async-signal-safe: atomic loads and stores, mmap (a bare system call in
 * glibc), sigaction and raise. errno is preserved for the interrupted code. */
static void on_sigbus(int signal, siginfo_t *info, void *context) {
    int saved = errno;
    /* si_code > 0: raised by the kernel for a memory access, with an address. */
    if (info != NULL && info->si_code > 0) {
        uintptr_t address = (uintptr_t)info->si_addr;
        for (int i = 0; i < QS_GUARD_SLOTS; i++) {
            struct guard_slot *slot = &slots[i];
            unsigned long long seq = atomic_load(&slot->seq);
            if ((seq & 1) != 0) continue;
            uintptr_t start = atomic_load(&slot->start);
            uintptr_t end = atomic_load(&slot->end);
            if (atomic_load(&slot->seq) != seq) continue;
            if (start == 0 || address < start || address >= end) continue;
            void *page = (void *)(address & ~(page_size - 1));
            void *zero = mmap(page, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (zero == MAP_FAILED) break;
            uintptr_t none = 0;
            atomic_compare_exchange_strong(&slot->first_fault, &none, address);
            atomic_fetch_add(&slot->faults, 1);
            errno = saved;
            return;
        }
    }
    pass_on(signal, info, context);
    errno = saved;
}

static void install(void) {
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    struct sigaction action = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART};
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous) != 0) install_error = errno;
}

int qs_guard_register(void *start, size_t length) {
    pthread_once(&installed, install);
    if (install_error != 0) return -install_error;
    uintptr_t first = (uintptr_t)start;
    if (first == 0 || length == 0 || first + length < first) return -EINVAL;
    for (int i = 0; i < QS_GUARD_SLOTS; i++) {
        unsigned int free_slot = 0;
        if (!atomic_compare_exchange_strong(&slots[i].owner, &free_slot, 1)) continue;
        struct guard_slot *slot = &slots[i];
        atomic_fetch_add(&slot->seq, 1);
        atomic_store(&slot->faults, 0);
        atomic_store(&slot->first_fault, 0);
        atomic_store(&slot->start, first);
        atomic_store(&slot->end, first + length);
        atomic_fetch_add(&slot->seq, 1);
        return i;
    }
    return -ENOSPC;
}

void qs_guard_unregister(int index) {
    if (index < 0 || index >= QS_GUARD_SLOTS) return;
    struct guard_slot *slot = &slots[index];
    atomic_fetch_add(&slot->seq, 1);
    atomic_store(&slot->start, 0);
    atomic_store(&slot->end, 0);
    atomic_fetch_add(&slot->seq, 1);
    atomic_store(&slot->owner, 0);
}

uint64_t qs_guard_faults(int index) {
    if (index < 0 || index >= QS_GUARD_SLOTS) return 0;
    return (uint64_t)atomic_load(&slots[index].faults);
}

uintptr_t qs_guard_first_fault(int index) {
    if (index < 0 || index >= QS_GUARD_SLOTS) return 0;
    return atomic_load(&slots[index].first_fault);
}

int qs_fallocate(int fd, int64_t offset, int64_t length) {
    while (fallocate(fd, 0, (off_t)offset, (off_t)length) != 0) {
        if (errno != EINTR) return -errno;
    }
    return 0;
}

int64_t qs_seek_data(int fd, int64_t offset) {
    off_t at = lseek(fd, (off_t)offset, SEEK_DATA);
    return at < 0 ? -errno : (int64_t)at;
}

int64_t qs_seek_hole(int fd, int64_t offset) {
    off_t at = lseek(fd, (off_t)offset, SEEK_HOLE);
    return at < 0 ? -errno : (int64_t)at;
}
