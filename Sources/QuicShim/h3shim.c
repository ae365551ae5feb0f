/* See qs_h3.h: versioned-ABI wrappers for nghttp3 0.8. */
#include "qs_h3.h"

void qs_h3_settings_default(nghttp3_settings *settings) {
  nghttp3_settings_default(settings);
}

int qs_h3_conn_server_new(nghttp3_conn **pconn,
                          const nghttp3_callbacks *callbacks,
                          const nghttp3_settings *settings, void *user_data) {
  /* NULL mem: nghttp3's default allocator (malloc). */
  return nghttp3_conn_server_new(pconn, callbacks, settings, NULL, user_data);
}
