/*
 * nghttp3 0.8 glue for memreplica's HTTP/3 face. nghttp3 versions its
 * settings and callback structs through function-like macros
 * (nghttp3_conn_server_new, nghttp3_settings_default) that Swift cannot
 * import; these wrappers pass the versions this header was compiled with.
 */
#ifndef QS_H3_H
#define QS_H3_H

#include <nghttp3/nghttp3.h>

#ifdef __cplusplus
extern "C" {
#endif

void qs_h3_settings_default(nghttp3_settings *settings);

int qs_h3_conn_server_new(nghttp3_conn **pconn,
                          const nghttp3_callbacks *callbacks,
                          const nghttp3_settings *settings, void *user_data);

#ifdef __cplusplus
}
#endif

#endif
