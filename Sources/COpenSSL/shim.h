/* OpenSSL: TLS for the TCP transports, and AES-GCM (GMAC) for keyed chunk
   hashes. Headers only: no C code here. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/evp.h>
