/* Exercises memreplica_client.h from a separate process:
 *   client_test read CONTROL REGION OUT     copies the region into OUT
 *   client_test write CONTROL REGION OFFSET  stores 8 bytes at OFFSET as a registered writer */
#include "memreplica_client.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: client_test read|write CONTROL REGION OUT|OFFSET\n");
        return 2;
    }
    int writing = strcmp(argv[1], "write") == 0;
    memreplica_region r;
    char error[512];
    if (memreplica_attach(argv[2], argv[3], writing, &r, error, sizeof(error)) != 0) {
        fprintf(stderr, "client_test: %s\n", error);
        return 1;
    }
    int rc = 0;
    if (writing) {
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
