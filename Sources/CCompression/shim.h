// Per-chunk compression of region pages on the wire: zstd and lz4, the
// Debian packages libzstd-dev and liblz4-dev (docs/PROTOCOL.md, PAGES).
#include <zstd.h>
#include <lz4.h>
