/* See quicshim.h for why each piece is here rather than in Swift. */
#define _GNU_SOURCE
#include "quicshim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/x509.h>

/* ---- ngtcp2 macro wrappers ------------------------------------------- */

int qs_conn_client_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid,
                       const ngtcp2_cid *scid, const ngtcp2_path *path,
                       uint32_t version, const ngtcp2_callbacks *callbacks,
                       const ngtcp2_settings *settings,
                       const ngtcp2_transport_params *params, void *user_data) {
  return ngtcp2_conn_client_new(pconn, dcid, scid, path, version, callbacks,
                                settings, params, NULL, user_data);
}

int qs_conn_server_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid,
                       const ngtcp2_cid *scid, const ngtcp2_path *path,
                       uint32_t version, const ngtcp2_callbacks *callbacks,
                       const ngtcp2_settings *settings,
                       const ngtcp2_transport_params *params, void *user_data) {
  return ngtcp2_conn_server_new(pconn, dcid, scid, path, version, callbacks,
                                settings, params, NULL, user_data);
}

int qs_conn_read_pkt(ngtcp2_conn *conn, const ngtcp2_path *path,
                     const ngtcp2_pkt_info *pi, const uint8_t *pkt,
                     size_t pktlen, ngtcp2_tstamp ts) {
  return ngtcp2_conn_read_pkt(conn, path, pi, pkt, pktlen, ts);
}

ngtcp2_ssize qs_conn_writev_stream(ngtcp2_conn *conn, ngtcp2_path *path,
                                   ngtcp2_pkt_info *pi, uint8_t *dest,
                                   size_t destlen, ngtcp2_ssize *pdatalen,
                                   uint32_t flags, int64_t stream_id,
                                   const ngtcp2_vec *datav, size_t datavcnt,
                                   ngtcp2_tstamp ts) {
  return ngtcp2_conn_writev_stream(conn, path, pi, dest, destlen, pdatalen,
                                   flags, stream_id, datav, datavcnt, ts);
}

ngtcp2_ssize qs_conn_write_connection_close(
    ngtcp2_conn *conn, ngtcp2_path *path, ngtcp2_pkt_info *pi, uint8_t *dest,
    size_t destlen, const ngtcp2_connection_close_error *ccerr,
    ngtcp2_tstamp ts) {
  return ngtcp2_conn_write_connection_close(conn, path, pi, dest, destlen,
                                            ccerr, ts);
}

void qs_conn_set_early_remote_transport_params(
    ngtcp2_conn *conn, const ngtcp2_transport_params *params) {
  ngtcp2_conn_set_early_remote_transport_params(conn, params);
}

void qs_settings_default(ngtcp2_settings *settings) {
  ngtcp2_settings_default(settings);
}

void qs_transport_params_default(ngtcp2_transport_params *params) {
  ngtcp2_transport_params_default(params);
}

void qs_conn_get_conn_stat(ngtcp2_conn *conn, ngtcp2_conn_stat *cstat) {
  ngtcp2_conn_get_conn_stat(conn, cstat);
}

static void log_to_stderr(void *user_data, const char *fmt, ...) {
  va_list ap;
  (void)user_data;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

void qs_settings_log_to_stderr(ngtcp2_settings *settings) {
  settings->log_printf = log_to_stderr;
}

/* ---- TLS (GnuTLS) ----------------------------------------------------- */

/* ClientHello binders seen within GnuTLS's anti-replay window (RFC 8446
 * §8.2). Keys are 12 bytes of window start plus a binder (at most 64). */
#define REPLAY_MAX_ENTRIES 4096
#define REPLAY_MAX_KEY 96

struct replay_entry {
  time_t expires;
  unsigned int len;
  unsigned char key[REPLAY_MAX_KEY];
};

struct qs_tls_ctx {
  gnutls_certificate_credentials_t cred;
  /* Server session tickets are sealed with this; random per context and
   * never written anywhere, so a restarted peer cannot resume old ones. */
  gnutls_datum_t ticket_key;
  gnutls_anti_replay_t anti_replay;
  /* Made on the first 0-RTT attempt; only servers that see one pay. */
  struct replay_entry *replay;
  size_t replay_count;
};

static const char tls_priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:%DISABLE_TLS13_COMPAT_MODE";

static void set_err(char *err, size_t errlen, const char *what, int rv) {
  if (err && errlen) {
    snprintf(err, errlen, "%s: %s", what, gnutls_strerror(rv));
  }
}

/* Verifies the peer's chain against the CA and records why it failed. */
static int check_peer_chain(qs_tls_session *ts, const char *missing) {
  gnutls_session_t session = ts->session;
  unsigned int list_size = 0;
  unsigned int status = 0;
  gnutls_datum_t out;
  int rv;

  if (gnutls_certificate_get_peers(session, &list_size) == NULL ||
      list_size == 0) {
    ts->peer_sent_no_certificate = 1;
    ts->verify_failed = 1;
    snprintf(ts->verify_reason, sizeof(ts->verify_reason), "%s", missing);
    return GNUTLS_E_NO_CERTIFICATE_FOUND;
  }
  rv = gnutls_certificate_verify_peers2(session, &status);
  if (rv < 0) {
    ts->verify_failed = 1;
    snprintf(ts->verify_reason, sizeof(ts->verify_reason), "%s",
             gnutls_strerror(rv));
    return rv;
  }
  if (status != 0) {
    ts->verify_failed = 1;
    if (gnutls_certificate_verification_status_print(
            status, GNUTLS_CRT_X509, &out, 0) == 0) {
      snprintf(ts->verify_reason, sizeof(ts->verify_reason), "%s",
               (const char *)out.data);
      gnutls_free(out.data);
    } else {
      snprintf(ts->verify_reason, sizeof(ts->verify_reason),
               "certificate is not trusted");
    }
    return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
  }
  return 0;
}

/* Runs inside the handshake; records why a peer was refused so the Swift
 * side can tell "untrusted peer" from "no certificate". */
static int verify_peer(gnutls_session_t session) {
  qs_tls_session *ts = gnutls_session_get_ptr(session);
  ts->verify_ran = 1;
  return check_peer_chain(ts, "peer presented no certificate");
}

/* gnutls_db_add_func for anti-replay: stores key unless it is already
 * there (a replayed ClientHello). When the table is full of live entries
 * the 0-RTT attempt is refused; the handshake itself goes on. */
static int replay_db_add(void *ptr, time_t expires, const gnutls_datum_t *key,
                         const gnutls_datum_t *data) {
  qs_tls_ctx *ctx = ptr;
  time_t now = time(NULL);
  size_t i, live = 0;
  struct replay_entry *e;
  (void)data;

  if (key->size > REPLAY_MAX_KEY) {
    return GNUTLS_E_DB_ERROR;
  }
  if (!ctx->replay) {
    ctx->replay = calloc(REPLAY_MAX_ENTRIES, sizeof(*ctx->replay));
    if (!ctx->replay) {
      return GNUTLS_E_MEMORY_ERROR;
    }
  }
  for (i = 0; i < ctx->replay_count; ++i) {
    /* GnuTLS passes whole seconds (now + window / 1000): one more second
     * keeps an entry for at least the window, even a sub-second one. */
    if (ctx->replay[i].expires + 1 >= now) {
      ctx->replay[live++] = ctx->replay[i];
    }
  }
  ctx->replay_count = live;
  for (i = 0; i < live; ++i) {
    e = &ctx->replay[i];
    if (e->len == key->size && memcmp(e->key, key->data, key->size) == 0) {
      return GNUTLS_E_DB_ENTRY_EXISTS;
    }
  }
  if (live == REPLAY_MAX_ENTRIES) {
    return GNUTLS_E_DB_ERROR;
  }
  e = &ctx->replay[ctx->replay_count++];
  e->expires = expires;
  e->len = key->size;
  memcpy(e->key, key->data, key->size);
  return 0;
}

int qs_tls_ctx_new(qs_tls_ctx **out, const char *ca_file, const char *cert_file,
                   const char *key_file, char *err, size_t errlen) {
  qs_tls_ctx *ctx = calloc(1, sizeof(*ctx));
  int rv;

  if (!ctx) {
    set_err(err, errlen, "out of memory", GNUTLS_E_MEMORY_ERROR);
    return GNUTLS_E_MEMORY_ERROR;
  }
  rv = gnutls_certificate_allocate_credentials(&ctx->cred);
  if (rv != 0) {
    set_err(err, errlen, "allocating credentials", rv);
    free(ctx);
    return rv;
  }
  rv = gnutls_certificate_set_x509_trust_file(ctx->cred, ca_file,
                                              GNUTLS_X509_FMT_PEM);
  if (rv <= 0) {
    if (rv == 0) {
      rv = GNUTLS_E_NO_CERTIFICATE_FOUND;
    }
    if (err && errlen) {
      snprintf(err, errlen, "CA file %s: %s", ca_file, gnutls_strerror(rv));
    }
    goto fail;
  }
  /* A context without its own certificate exists only so tests can show
   * that a server refuses such a client. */
  rv = 0;
  if (cert_file && key_file) {
    rv = gnutls_certificate_set_x509_key_file(ctx->cred, cert_file, key_file,
                                              GNUTLS_X509_FMT_PEM);
  }
  if (rv < 0) {
    if (err && errlen) {
      snprintf(err, errlen, "certificate %s / key %s: %s", cert_file, key_file,
               gnutls_strerror(rv));
    }
    goto fail;
  }
  gnutls_certificate_set_verify_function(ctx->cred, verify_peer);
  rv = gnutls_session_ticket_key_generate(&ctx->ticket_key);
  if (rv != 0) {
    set_err(err, errlen, "making the session ticket key", rv);
    goto fail;
  }
  rv = gnutls_anti_replay_init(&ctx->anti_replay);
  if (rv != 0) {
    set_err(err, errlen, "anti-replay state", rv);
    goto fail;
  }
  gnutls_anti_replay_set_add_function(ctx->anti_replay, replay_db_add);
  gnutls_anti_replay_set_ptr(ctx->anti_replay, ctx);
  *out = ctx;
  return 0;

fail:
  qs_tls_ctx_free(ctx);
  return rv;
}

void qs_tls_ctx_free(qs_tls_ctx *ctx) {
  if (ctx) {
    if (ctx->ticket_key.data) {
      gnutls_memset(ctx->ticket_key.data, 0, ctx->ticket_key.size);
      gnutls_free(ctx->ticket_key.data);
    }
    if (ctx->anti_replay) {
      gnutls_anti_replay_deinit(ctx->anti_replay);
    }
    free(ctx->replay);
    gnutls_certificate_free_credentials(ctx->cred);
    free(ctx);
  }
}

void qs_tls_ctx_set_replay_window(qs_tls_ctx *ctx, unsigned int ms) {
  gnutls_anti_replay_set_window(ctx->anti_replay, ms);
}

/* Client: keeps the newest ticket as resumable session data. A ticket that
 * cannot be packed is skipped; the connection goes on. */
static int ticket_hook(gnutls_session_t session, unsigned int htype,
                       unsigned when, unsigned int incoming,
                       const gnutls_datum_t *msg) {
  qs_tls_session *ts = gnutls_session_get_ptr(session);
  gnutls_datum_t data = {NULL, 0};
  (void)when;
  (void)msg;

  if (htype != GNUTLS_HANDSHAKE_NEW_SESSION_TICKET || !incoming) {
    return 0;
  }
  if (gnutls_session_get_data2(session, &data) != 0) {
    return 0;
  }
  qs_tls_clear_ticket(ts);
  ts->ticket = data;
  return 0;
}

int qs_tls_session_new(qs_tls_session *ts, qs_tls_ctx *ctx, int is_server,
                       const char *const *alpn, size_t alpn_count,
                       const char *server_name, const uint8_t *resume_data,
                       size_t resume_len, int early_data, char *err,
                       size_t errlen) {
  gnutls_datum_t protos[8];
  unsigned int flags = GNUTLS_NO_END_OF_EARLY_DATA;
  int rv;
  size_t i;

  if (alpn_count == 0 || alpn_count > 8) {
    set_err(err, errlen, "ALPN list must hold 1 to 8 names",
            GNUTLS_E_INVALID_REQUEST);
    return GNUTLS_E_INVALID_REQUEST;
  }
  if (is_server) {
    /* Tickets are sent by hand once the client's certificate is verified
     * (qs_tls_send_ticket); 0-RTT, when early_data allows it, is accepted
     * under anti-replay. */
    flags |= GNUTLS_SERVER | GNUTLS_NO_AUTO_SEND_TICKET;
    if (early_data) {
      flags |= GNUTLS_ENABLE_EARLY_DATA;
    }
  } else {
    flags |= GNUTLS_CLIENT;
    if (early_data && resume_data) {
      flags |= GNUTLS_ENABLE_EARLY_DATA;
    }
  }
  rv = gnutls_init(&ts->session, flags);
  if (rv != 0) {
    set_err(err, errlen, "gnutls_init", rv);
    return rv;
  }
  rv = gnutls_priority_set_direct(ts->session, tls_priority, NULL);
  if (rv != 0) {
    set_err(err, errlen, "TLS priority", rv);
    goto fail;
  }
  rv = is_server ? ngtcp2_crypto_gnutls_configure_server_session(ts->session)
                 : ngtcp2_crypto_gnutls_configure_client_session(ts->session);
  if (rv != 0) {
    set_err(err, errlen, "configuring QUIC TLS", GNUTLS_E_INTERNAL_ERROR);
    rv = GNUTLS_E_INTERNAL_ERROR;
    goto fail;
  }
  gnutls_session_set_ptr(ts->session, ts);
  rv = gnutls_credentials_set(ts->session, GNUTLS_CRD_CERTIFICATE, ctx->cred);
  if (rv != 0) {
    set_err(err, errlen, "setting credentials", rv);
    goto fail;
  }
  for (i = 0; i < alpn_count; ++i) {
    protos[i].data = (unsigned char *)alpn[i];
    protos[i].size = (unsigned int)strlen(alpn[i]);
  }
  rv = gnutls_alpn_set_protocols(
      ts->session, protos, (unsigned int)alpn_count,
      GNUTLS_ALPN_MANDATORY | (is_server ? GNUTLS_ALPN_SERVER_PRECEDENCE : 0));
  if (rv != 0) {
    set_err(err, errlen, "setting ALPN", rv);
    goto fail;
  }
  if (is_server) {
    rv = gnutls_session_ticket_enable_server(ts->session, &ctx->ticket_key);
    if (rv != 0) {
      set_err(err, errlen, "enabling session tickets", rv);
      goto fail;
    }
    gnutls_anti_replay_enable(ts->session, ctx->anti_replay);
    /* RFC 9001 §4.6.1: a QUIC ticket allows 0-RTT with 0xffffffff; the
     * transport's flow control bounds early data instead. */
    rv = gnutls_record_set_max_early_data_size(ts->session, 0xffffffffu);
    if (rv != 0) {
      set_err(err, errlen, "allowing early data", rv);
      goto fail;
    }
    /* Mutual TLS: a client without a certificate is refused. */
    gnutls_certificate_server_set_request(ts->session, GNUTLS_CERT_REQUIRE);
    /* Without a CA list in the request, a client presents its certificate
     * even when another CA issued it, so the refusal names the real cause
     * (untrusted certificate) instead of "no certificate". */
    gnutls_certificate_send_x509_rdn_sequence(ts->session, 1);
  } else if (server_name && server_name[0]) {
    rv = gnutls_server_name_set(ts->session, GNUTLS_NAME_DNS, server_name,
                                strlen(server_name));
    if (rv != 0) {
      set_err(err, errlen, "setting server name", rv);
      goto fail;
    }
  }
  if (!is_server) {
    gnutls_handshake_set_hook_function(ts->session,
                                       GNUTLS_HANDSHAKE_NEW_SESSION_TICKET,
                                       GNUTLS_HOOK_POST, ticket_hook);
    if (resume_data && resume_len > 0 && resume_len <= UINT32_MAX) {
      /* Unreadable data only costs the resumption. */
      (void)gnutls_session_set_data(ts->session, resume_data, resume_len);
    }
  }
  return 0;

fail:
  gnutls_deinit(ts->session);
  ts->session = NULL;
  return rv;
}

void qs_tls_session_free(qs_tls_session *ts) {
  if (ts && ts->session) {
    gnutls_deinit(ts->session);
    ts->session = NULL;
  }
  if (ts) {
    qs_tls_clear_ticket(ts);
  }
}

void qs_tls_clear_ticket(qs_tls_session *ts) {
  if (ts->ticket.data) {
    gnutls_memset(ts->ticket.data, 0, ts->ticket.size);
    gnutls_free(ts->ticket.data);
  }
  ts->ticket.data = NULL;
  ts->ticket.size = 0;
}

int qs_tls_send_ticket(qs_tls_session *ts) {
  return gnutls_session_ticket_send(ts->session, 1, 0);
}

int qs_tls_session_resumed(const qs_tls_session *ts) {
  return gnutls_session_is_resumed(ts->session) != 0;
}

int qs_tls_early_data_accepted(const qs_tls_session *ts) {
  return (gnutls_session_get_flags(ts->session) & GNUTLS_SFLAGS_EARLY_DATA) !=
         0;
}

int qs_tls_verify_resumed_peer(qs_tls_session *ts) {
  if (!gnutls_session_is_resumed(ts->session)) {
    return 0;
  }
  return check_peer_chain(ts, "the resumed session holds no peer certificate");
}

int qs_tls_selected_alpn(const qs_tls_session *ts, char *buf, size_t buflen) {
  gnutls_datum_t proto;
  if (buflen == 0 ||
      gnutls_alpn_get_selected_protocol(ts->session, &proto) != 0 ||
      proto.size >= buflen) {
    return -1;
  }
  memcpy(buf, proto.data, proto.size);
  buf[proto.size] = '\0';
  return 0;
}

/* The DER bytes only: naming the peer (subject, CN, SANs, fingerprint) is
 * done once, in Swift, for both transports (PeerIdentity+Certificate). */
int qs_tls_peer_certificate(const qs_tls_session *ts, const uint8_t **der,
                            size_t *len) {
  unsigned int n = 0;
  const gnutls_datum_t *certs = gnutls_certificate_get_peers(ts->session, &n);
  if (certs == NULL || n == 0 || certs[0].data == NULL) {
    return -1;
  }
  *der = certs[0].data;
  *len = certs[0].size;
  return 0;
}

int qs_tls_ctx_certificate(const qs_tls_ctx *ctx, const uint8_t **der,
                           size_t *len) {
  gnutls_datum_t raw;
  int rv = gnutls_certificate_get_crt_raw(ctx->cred, 0, 0, &raw);
  if (rv != 0) {
    return rv;
  }
  *der = raw.data;
  *len = raw.size;
  return 0;
}
