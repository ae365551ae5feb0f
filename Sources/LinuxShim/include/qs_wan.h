/*
 * The WAN emulator's kernel calls that Swift cannot make: TUNSETIFF needs
 * struct ifreq (a union Swift imports without its fields' layout), setns()
 * is declared only under _GNU_SOURCE, and prctl() is variadic. Each
 * returns a value >= 0 on success and -errno on failure.
 */
#ifndef QS_WAN_H
#define QS_WAN_H

#ifdef __cplusplus
extern "C" {
#endif

/* Opens /dev/net/tun and attaches a layer-3 device `name` (IFF_TUN |
 * IFF_NO_PI, no vnet header, so every read is one IP packet of at most the
 * MTU) in the calling thread's network namespace. The descriptor is
 * non-blocking and close-on-exec; the device disappears when it closes.
 * Returns the descriptor. */
int qs_tun_open(const char *name);

/* Moves the calling thread into the network namespace behind `fd` (a file
 * under /run/netns or /proc/thread-self/ns/net). Returns 0. */
int qs_setns_net(int fd);

/* Sets the calling thread's timer slack (prctl PR_SET_TIMERSLACK; the
 * default 50 us would late-release every delayed packet by that much).
 * Returns 0. */
int qs_thread_timer_slack(unsigned long nanoseconds);

#ifdef __cplusplus
}
#endif

#endif
