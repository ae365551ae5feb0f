/*
 * QuicShim: the parts of memreplica's QUIC glue that Swift cannot express.
 *
 * - ngtcp2 0.12's function-like macros (versioned struct ABI) and its
 *   varargs log hook;
 * - GnuTLS session set-up for mutual TLS 1.3 with a per-session record of
 *   why certificate verification failed (so Swift can name the error);
 * - GnuTLS session resumption: server tickets under a per-context random
 *   key, 0-RTT with anti-replay, and the client's NewSessionTicket hook;
 * - nghttp3's versioned constructors for the HTTP/3 face (qs_h3.h).
 *
 * Only ngtcp2, GnuTLS and nghttp3 are here; the Linux interfaces Swift
 * cannot reach (userfaultfd, PAGEMAP_SCAN, TUN, SCM_RIGHTS, UDP GSO/GRO,
 * memfd) are in LinuxShim.
 *
 * Everything else (the packet loop, streams, flow control, errors users
 * see) lives in Swift.
 */
#ifndef QUICSHIM_H
#define QUICSHIM_H

/* System headers (sockets, epoll ...) come through LinuxShim's module. */
#include <linuxshim.h>

#include "qs_h3.h"

#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ngtcp2 macro wrappers ------------------------------------------- */

int qs_conn_client_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid,
                       const ngtcp2_cid *scid, const ngtcp2_path *path,
                       uint32_t version, const ngtcp2_callbacks *callbacks,
                       const ngtcp2_settings *settings,
                       const ngtcp2_transport_params *params, void *user_data);

int qs_conn_server_new(ngtcp2_conn **pconn, const ngtcp2_cid *dcid,
                       const ngtcp2_cid *scid, const ngtcp2_path *path,
                       uint32_t version, const ngtcp2_callbacks *callbacks,
                       const ngtcp2_settings *settings,
                       const ngtcp2_transport_params *params, void *user_data);

int qs_conn_read_pkt(ngtcp2_conn *conn, const ngtcp2_path *path,
                     const ngtcp2_pkt_info *pi, const uint8_t *pkt,
                     size_t pktlen, ngtcp2_tstamp ts);

ngtcp2_ssize qs_conn_writev_stream(ngtcp2_conn *conn, ngtcp2_path *path,
                                   ngtcp2_pkt_info *pi, uint8_t *dest,
                                   size_t destlen, ngtcp2_ssize *pdatalen,
                                   uint32_t flags, int64_t stream_id,
                                   const ngtcp2_vec *datav, size_t datavcnt,
                                   ngtcp2_tstamp ts);

ngtcp2_ssize qs_conn_write_connection_close(
    ngtcp2_conn *conn, ngtcp2_path *path, ngtcp2_pkt_info *pi, uint8_t *dest,
    size_t destlen, const ngtcp2_connection_close_error *ccerr,
    ngtcp2_tstamp ts);

void qs_conn_set_early_remote_transport_params(
    ngtcp2_conn *conn, const ngtcp2_transport_params *params);

void qs_settings_default(ngtcp2_settings *settings);
void qs_transport_params_default(ngtcp2_transport_params *params);
void qs_conn_get_conn_stat(ngtcp2_conn *conn, ngtcp2_conn_stat *cstat);

/* Route ngtcp2's own debug log to stderr (ngtcp2_printf is varargs). */
void qs_settings_log_to_stderr(ngtcp2_settings *settings);

/* ---- TLS (GnuTLS) ----------------------------------------------------- */

typedef struct qs_tls_ctx qs_tls_ctx;

/* Loads the CA bundle, this peer's certificate and key, and makes the
 * context's session ticket key (random, in memory only: tickets die with
 * the context) and anti-replay state for 0-RTT. A context and every
 * session made from it belong to one thread. On failure returns a negative
 * GnuTLS error and writes a one-line reason into err. */
int qs_tls_ctx_new(qs_tls_ctx **out, const char *ca_file, const char *cert_file,
                   const char *key_file, char *err, size_t errlen);
void qs_tls_ctx_free(qs_tls_ctx *ctx);

/* Server: the anti-replay window for 0-RTT (RFC 8446 §8.2), in ms. A
 * ticket older than the window's start, or whose age the client misstates
 * by more than the window, gets no 0-RTT (the resumption still works). */
void qs_tls_ctx_set_replay_window(qs_tls_ctx *ctx, unsigned int ms);

/* Per-connection TLS state. conn_ref must stay first: ngtcp2's GnuTLS
 * glue reads it through gnutls_session_get_ptr(). */
typedef struct qs_tls_session {
  ngtcp2_crypto_conn_ref conn_ref;
  gnutls_session_t session;
  /* Set by the certificate verify hook. */
  int verify_ran;
  int verify_failed;
  int peer_sent_no_certificate;
  char verify_reason[256];
  /* Client: the newest session ticket the server sent, as
   * gnutls_session_get_data2 packs it (NULL data when none is waiting).
   * Take it with qs_tls_clear_ticket once copied. */
  gnutls_datum_t ticket;
} qs_tls_session;

/* alpn: protocol names this side offers (client) or accepts (server).
 * Client only: resume_data (a ticket from qs_tls_session.ticket, or NULL)
 * asks to resume that session; early_data also offers 0-RTT with it. A
 * ticket GnuTLS cannot read is ignored (a full handshake follows).
 * Server: early_data says whether 0-RTT may be accepted. */
int qs_tls_session_new(qs_tls_session *ts, qs_tls_ctx *ctx, int is_server,
                       const char *const *alpn, size_t alpn_count,
                       const char *server_name, const uint8_t *resume_data,
                       size_t resume_len, int early_data, char *err,
                       size_t errlen);
void qs_tls_session_free(qs_tls_session *ts);

/* Frees a ticket taken from ts->ticket. */
void qs_tls_clear_ticket(qs_tls_session *ts);

/* Server: sends one NewSessionTicket (call once the handshake is complete,
 * so the ticket carries the verified client certificate). */
int qs_tls_send_ticket(qs_tls_session *ts);

/* Nonzero when this handshake resumed an earlier session. */
int qs_tls_session_resumed(const qs_tls_session *ts);

/* Nonzero when the server accepted the client's 0-RTT early data. */
int qs_tls_early_data_accepted(const qs_tls_session *ts);

/* A resumed session skips the certificate exchange: the peer's chain is
 * the one stored in the ticket. Verifies it again against the CA (expiry
 * included). 0 when not resumed or still valid; otherwise negative, with
 * verify_failed and verify_reason set. */
int qs_tls_verify_resumed_peer(qs_tls_session *ts);

/* Negotiated ALPN into buf (NUL-terminated); 0 on success. */
int qs_tls_selected_alpn(const qs_tls_session *ts, char *buf, size_t buflen);

/* The peer's leaf certificate, DER, as GnuTLS holds it for the session
 * (valid until the session is freed; do not free it). Returns 0, or -1 when
 * the peer presented none. */
int qs_tls_peer_certificate(const qs_tls_session *ts, const uint8_t **der,
                            size_t *len);

/* Our own certificate, DER, as the credentials hold it (valid while the
 * context lives). Returns 0, or a negative GnuTLS error when we have none. */
int qs_tls_ctx_certificate(const qs_tls_ctx *ctx, const uint8_t **der,
                           size_t *len);

#ifdef __cplusplus
}
#endif

#endif
