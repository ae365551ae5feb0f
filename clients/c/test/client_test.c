/* Exercises memreplica_client.h from a separate process:
 *   client_test read CONTROL REGION OUT     copies the region into OUT
 *   client_test write CONTROL REGION OFFSET  stores 8 bytes at OFFSET as a registered writer
 *   client_test write-loop CONTROL REGION ROUNDS SEED
 *       as a registered writer, stores 64 pseudo-random 8-byte words at
 *       pseudo-random aligned offsets per round, ROUNDS rounds 1 ms apart
 *       (0: until killed); prints "attached" once attached */
#define _POSIX_C_SOURCE 200809L
#include "memreplica_client.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* xorshift64: the same sequence from the same seed. */
static uint64_t next_random(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

static int write_loop(memreplica_region *r, unsigned long rounds, uint64_t seed) {
    uint64_t state = seed | 1;
    size_t words = r->size / 8;
    printf("attached\n");
    fflush(stdout);
    for (unsigned long round = 0; rounds == 0 || round < rounds; round++) {
        for (int i = 0; i < 64; i++) {
            uint64_t value = next_random(&state);
            size_t word = (size_t)(next_random(&state) % words);
            memcpy(r->base + word * 8, &value, 8);
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    return 0;
}

int main(int argc, char **argv) {
    int looping = argc == 6 && strcmp(argv[1], "write-loop") == 0;
    if (argc != 5 && !looping) {
        fprintf(stderr, "usage: client_test read|write CONTROL REGION OUT|OFFSET\n"
                        "       client_test write-loop CONTROL REGION ROUNDS SEED\n");
        return 2;
    }
    int writing = looping || strcmp(argv[1], "write") == 0;
    memreplica_region r;
    char error[512];
    if (memreplica_attach(argv[2], argv[3], writing, &r, error, sizeof(error)) != 0) {
        fprintf(stderr, "client_test: %s\n", error);
        return 1;
    }
    int rc = 0;
    if (looping) {
        rc = write_loop(&r, strtoul(argv[4], NULL, 10), (uint64_t)strtoull(argv[5], NULL, 10));
    } else if (writing) {
        size_t offset = (size_t)strtoull(argv[4], NULL, 10);
        uint64_t value = 0xC0FFEE00C0FFEE01ULL;
        if (offset + 8 > r.size) {
            rc = 2;
        } else {
            memcpy(r.base + offset, &value, 8);
        }
    } else {
        FILE *out = fopen(argv[4], "wb");
        if (!out) {
            rc = 1;
        } else {
            /* Each copy from the mapping resolves its faults as they come;
             * a block the peer could not serve is an error, never written. */
            unsigned char buffer[65536];
            for (size_t done = 0; done < r.size && rc == 0;) {
                size_t n = r.size - done < sizeof(buffer) ? r.size - done : sizeof(buffer);
                if (memreplica_read(&r, done, buffer, n, error, sizeof(error)) != 0) {
                    fprintf(stderr, "client_test: %s\n", error);
                    rc = 1;
                    break;
                }
                if (fwrite(buffer, 1, n, out) != n) rc = 1;
                done += n;
            }
            if (fclose(out) != 0) rc = 1;
        }
    }
    memreplica_detach(&r);
    return rc;
}
