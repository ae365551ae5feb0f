#define _GNU_SOURCE
#include "memreplica_client.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* Newer than some installed kernel headers (kernel ABI, fixed values). */
#define MR_UFFD_FEATURE_WP_HUGETLBFS_SHMEM 0x1000ULL
#define MR_UFFD_FEATURE_WP_UNPOPULATED 0x2000ULL
#define MR_UFFD_FEATURE_WP_ASYNC 0x8000ULL
#define MR_UFFDIO_REGISTER_MODE_WP 0x2ULL
#define MR_UFFDIO_WRITEPROTECT_MODE_WP 0x1ULL
#define MR_TIMEOUT_MS 5000

static int fail(char *error, size_t length, const char *format, ...) {
    if (error && length) {
        va_list args;
        va_start(args, format);
        vsnprintf(error, length, format, args);
        va_end(args);
    }
    return -1;
}

static int connect_control(const char *path) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(address.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(address.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&address, sizeof(address)) != 0) {
        int saved = errno;
        close(s);
        errno = saved;
        return -1;
    }
    return s;
}

/* Sends one line with `fd` attached (none when fd < 0). */
static int send_line(int s, const char *line, int fd) {
    struct iovec iov = {.iov_base = (void *)(uintptr_t)line, .iov_len = strlen(line)};
    union {
        char bytes[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof(control.bytes);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n = sendmsg(s, &msg, MSG_NOSIGNAL);
    return n == (ssize_t)iov.iov_len ? 0 : -1;
}

/* Reads one line (without the newline) within the timeout. */
static int read_line(int s, char *buffer, size_t capacity) {
    size_t used = 0;
    while (used + 1 < capacity) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        int rc = poll(&p, 1, MR_TIMEOUT_MS);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) return -1;
        ssize_t n = read(s, buffer + used, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (buffer[used] == '\n') break;
        used++;
    }
    buffer[used] = 0;
    return used > 0 ? 0 : -1;
}

/* The value of "key" in a flat JSON object, as a string (unescaped) or a
 * bare token (number, true, false). 0 when found. */
static int json_value(const char *json, const char *key, char *out, size_t capacity) {
    char pattern[64];
    snprintf(pattern, sizeof(pattern), "\"%s\":", key);
    const char *p = strstr(json, pattern);
    if (!p) return -1;
    p += strlen(pattern);
    size_t used = 0;
    if (*p == '"') {
        for (p++; *p && *p != '"' && used + 1 < capacity; p++) {
            if (*p == '\\' && p[1]) p++;
            out[used++] = *p;
        }
    } else {
        for (; *p && *p != ',' && *p != '}' && used + 1 < capacity; p++) out[used++] = *p;
    }
    out[used] = 0;
    return 0;
}

/* One request; the answer line in `answer`, or -1 with the reason. */
static int exchange(const char *control_path, const char *request, int fd, int *session, char *answer,
                    size_t capacity, char *error, size_t error_length) {
    int s = connect_control(control_path);
    if (s < 0) return fail(error, error_length, "no memreplica peer answers on %s: %s", control_path, strerror(errno));
    if (send_line(s, request, fd) != 0 || read_line(s, answer, capacity) != 0) {
        close(s);
        return fail(error, error_length, "the peer did not answer on %s", control_path);
    }
    char message[512];
    if (json_value(answer, "error", message, sizeof(message)) == 0) {
        close(s);
        return fail(error, error_length, "the peer refused the request: %s", message);
    }
    if (session) *session = s; else close(s);
    return 0;
}

static int open_uffd(void) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) return fd;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return -1;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    close(dev);
    return fd;
}

/* Registers [base, base+length) on a new userfaultfd: MISSING faults, or
 * async write-protection (everything protected now). */
static int register_mapping(void *base, size_t length, int write_protect, char *error, size_t error_length) {
    int uffd = open_uffd();
    if (uffd < 0) return fail(error, error_length, "userfaultfd: %s", strerror(errno));
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (write_protect) {
        struct uffdio_api probe = {.api = UFFD_API};
        int p = open_uffd();
        if (p < 0 || ioctl(p, UFFDIO_API, &probe) != 0) {
            if (p >= 0) close(p);
            close(uffd);
            return fail(error, error_length, "UFFDIO_API: %s", strerror(errno));
        }
        close(p);
        if (!(probe.features & MR_UFFD_FEATURE_WP_ASYNC)) {
            close(uffd);
            return fail(error, error_length, "the kernel has no UFFD_FEATURE_WP_ASYNC (Linux >= 6.7 needed)");
        }
        api.features = probe.features &
                       (MR_UFFD_FEATURE_WP_ASYNC | MR_UFFD_FEATURE_WP_UNPOPULATED | MR_UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    } else {
        api.features = UFFD_FEATURE_MISSING_SHMEM;
    }
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)(uintptr_t)base, .len = length},
        .mode = write_protect ? MR_UFFDIO_REGISTER_MODE_WP : UFFDIO_REGISTER_MODE_MISSING,
    };
    const char *step = "UFFDIO_API";
    if (ioctl(uffd, UFFDIO_API, &api) != 0) goto failed;
    step = "UFFDIO_REGISTER";
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) goto failed;
    if (write_protect) {
        struct uffdio_writeprotect wp = {.range = reg.range, .mode = MR_UFFDIO_WRITEPROTECT_MODE_WP};
        step = "UFFDIO_WRITEPROTECT";
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) goto failed;
    }
    return uffd;
failed:;
    int saved = errno;
    close(uffd);
    return fail(error, error_length, "%s: %s", step, strerror(saved));
}

/* A lazy session's watcher: a thread that waits for the peer to end the
 * session (or for detach) and then retires the mapping, so no thread stays
 * asleep on a chunk that cannot come. */
struct memreplica_watch {
    pthread_t thread;
    pthread_mutex_t lock;
    int stop[2];          /* detach writes to stop[1] */
    atomic_int failed;    /* the peer ended the session */
    int retired;          /* the mapping is private zeros now (under lock) */
    char reason[512];
};

/* Replaces a lazy mapping in place with private zero pages, then closes the
 * userfaultfd, which wakes threads asleep in a fault onto those pages (not
 * onto the file, where a read would plant a page of zeros). Under lock. */
static void retire_mapping(memreplica_region *r) {
    if (r->base && r->uffd >= 0) {
        if (mmap(r->base, r->size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
            munmap(r->base, r->size);
        close(r->uffd);
        r->uffd = -1;
    }
}

static void *watch_session(void *argument) {
    memreplica_region *r = argument;
    struct memreplica_watch *w = r->watch;
    for (;;) {
        struct pollfd fds[2] = {{.fd = r->session, .events = POLLIN}, {.fd = w->stop[0], .events = POLLIN}};
        int rc = poll(fds, 2, -1);
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0 || fds[1].revents) return NULL;
        if (!fds[0].revents) continue;
        char line[1024] = {0};
        char message[400];
        pthread_mutex_lock(&w->lock);
        if (read_line(r->session, line, sizeof(line)) == 0 && json_value(line, "error", message, sizeof(message)) == 0)
            snprintf(w->reason, sizeof(w->reason), "the peer ended the session: %s", message);
        else
            snprintf(w->reason, sizeof(w->reason), "the peer ended the session");
        atomic_store(&w->failed, 1);
        retire_mapping(r);
        w->retired = 1;
        pthread_mutex_unlock(&w->lock);
        return NULL;
    }
}

static int start_watch(memreplica_region *r, char *error, size_t error_length) {
    struct memreplica_watch *w = calloc(1, sizeof(*w));
    if (!w) return fail(error, error_length, "out of memory");
    if (pipe2(w->stop, O_CLOEXEC) != 0) {
        free(w);
        return fail(error, error_length, "pipe: %s", strerror(errno));
    }
    pthread_mutex_init(&w->lock, NULL);
    r->watch = w;
    int rc = pthread_create(&w->thread, NULL, watch_session, r);
    if (rc != 0) {
        close(w->stop[0]);
        close(w->stop[1]);
        pthread_mutex_destroy(&w->lock);
        free(w);
        r->watch = NULL;
        return fail(error, error_length, "pthread_create: %s", strerror(rc));
    }
    return 0;
}

int memreplica_session_alive(memreplica_region *r, char *reason, size_t reason_length) {
    if (!r->watch) return 1;
    if (!atomic_load(&r->watch->failed)) return 1;
    if (reason && reason_length) {
        pthread_mutex_lock(&r->watch->lock);
        snprintf(reason, reason_length, "%s", r->watch->reason);
        pthread_mutex_unlock(&r->watch->lock);
    }
    return 0;
}

int memreplica_read(memreplica_region *r, size_t offset, void *buffer, size_t length, char *error,
                    size_t error_length) {
    if (!r->base) return fail(error, error_length, "the region is not attached");
    if (offset > r->size || length > r->size - offset)
        return fail(error, error_length, "bytes %zu..+%zu are outside the region (%zu bytes)", offset, length, r->size);
    char reason[512];
    if (!memreplica_session_alive(r, reason, sizeof(reason))) return fail(error, error_length, "%s", reason);
    memcpy(buffer, r->base + offset, length);
    /* Checked after the copy: a session that ended during it may have
     * handed zeros to a thread that waited. */
    if (!memreplica_session_alive(r, reason, sizeof(reason)))
        return fail(error, error_length, "%s: the bytes read are not the primary's", reason);
    return 0;
}

int memreplica_attach(const char *control_path, const char *region, int writable, memreplica_region *out,
                      char *error, size_t error_length) {
    memset(out, 0, sizeof(*out));
    out->session = -1;
    out->uffd = -1;
    if (strpbrk(region, "\"\\\n")) return fail(error, error_length, "bad region name");
    char request[1024];
    char answer[8192];
    char value[4096];
    snprintf(request, sizeof(request), "{\"command\":\"attach\",\"region\":\"%s\"}\n", region);
    if (exchange(control_path, request, -1, NULL, answer, sizeof(answer), error, error_length) != 0) return -1;
    if (json_value(answer, "size", value, sizeof(value)) != 0) return fail(error, error_length, "unreadable answer");
    out->size = (size_t)strtoull(value, NULL, 10);
    if (json_value(answer, "chunkSize", value, sizeof(value)) == 0) out->chunk_size = (size_t)strtoull(value, NULL, 10);
    out->lazy = json_value(answer, "lazy", value, sizeof(value)) == 0 && strcmp(value, "true") == 0;
    out->primary = json_value(answer, "role", value, sizeof(value)) == 0 && strcmp(value, "primary") == 0;
    if (writable && !out->primary) return fail(error, error_length, "region '%s' is a replica: only replication writes it", region);
    if (json_value(answer, "path", value, sizeof(value)) != 0) return fail(error, error_length, "unreadable answer");

    /* userfaultfd registers only mappings that may become writable. */
    int fd = open(value, (writable || out->lazy ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return fail(error, error_length, "cannot open %s: %s", value, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != out->size) {
        close(fd);
        return fail(error, error_length, "%s does not hold the region's %zu bytes", value, out->size);
    }
    long page = sysconf(_SC_PAGESIZE);
    out->mapped_length = (out->size + (size_t)page - 1) / (size_t)page * (size_t)page;
    void *base = mmap(NULL, out->size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) return fail(error, error_length, "mmap: %s", strerror(errno));
    out->base = base;
    if (!out->lazy && !writable) return 0;

    int uffd = register_mapping(base, out->mapped_length, writable, error, error_length);
    if (uffd < 0) {
        munmap(base, out->size);
        return -1;
    }
    snprintf(request, sizeof(request),
             "{\"command\":\"attach\",\"region\":\"%s\",\"role\":\"%s\",\"base\":%llu,\"length\":%zu}\n", region,
             out->primary ? "primary" : "replica", (unsigned long long)(uintptr_t)base, out->mapped_length);
    if (exchange(control_path, request, uffd, &out->session, answer, sizeof(answer), error, error_length) != 0) {
        close(uffd);
        munmap(base, out->size);
        return -1;
    }
    out->uffd = uffd;
    if (out->lazy && start_watch(out, error, error_length) != 0) {
        memreplica_detach(out);
        return -1;
    }
    return 0;
}

int memreplica_detach(memreplica_region *r) {
    struct memreplica_watch *w = r->watch;
    if (w) {
        /* The watcher first: it must not read the session or retire the
         * mapping once we close them. */
        (void)write(w->stop[1], "x", 1);
        pthread_join(w->thread, NULL);
        close(w->stop[0]);
        close(w->stop[1]);
        pthread_mutex_destroy(&w->lock);
        free(w);
        r->watch = NULL;
    }
    if (r->session >= 0) {
        char answer[256];
        if (send_line(r->session, "detach\n", -1) == 0) (void)read_line(r->session, answer, sizeof(answer));
        close(r->session);
        r->session = -1;
    }
    if (r->base && r->lazy) {
        /* A thread may still sleep in a fault the peer could not serve;
         * closing the descriptor wakes it to fault again. Unmapped, that is
         * a SIGSEGV; still mapped, its read would plant a page of zeros in
         * the region's page cache, which the peer's later install would
         * take for the real bytes. So the mapping becomes private zero
         * pages in place first (nothing committed), kept for good (the
         * watcher may have done so already). */
        retire_mapping(r);
    } else if (r->base) {
        munmap(r->base, r->size);
    }
    r->base = NULL;
    if (r->uffd >= 0) close(r->uffd);
    r->uffd = -1;
    return 0;
}
