/* OpenSSL for the TLS-over-TCP baseline. Headers only: no C code here. */
#include <openssl/err.h>
#include <openssl/ssl.h>
