/* Diagnostic LD_PRELOAD shim (bench/gateway-overhead.sh with NODELAY_SHIM=1): sets TCP_NODELAY
 * on every accepted socket. The worker and gateway serve through tonic's
 * serve_with_incoming(TcpListenerStream), which bypasses tonic's own tcp_nodelay setting, so
 * their accepted sockets run with Nagle's algorithm; this shows what setting it would change
 * without touching their code. Not used by default: the default results measure the code as is. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static int nodelay(int fd) {
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    return nodelay(real(s, addr, len, flags));
}

int accept(int s, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    return nodelay(real(s, addr, len));
}
