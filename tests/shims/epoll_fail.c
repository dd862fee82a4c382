/* LD_PRELOAD shim for tests/test_failure_paths.py: makes epoll_ctl(EPOLL_CTL_ADD) fail as
 * the kernel does past fs.epoll.max_user_watches (ENOSPC), for the fds FC_EPOLL_FAIL names:
 *   c  accepted connections (sockets not listening)
 *   l  the listening socket, from its 2nd ADD (a re-ADD after a pause) for FC_EPOLL_FAIL_N times
 *   e  the wake-up fd (an eventfd or a pipe)
 * The real syscall does everything else. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_adds;

static int is_wakeup_fd(int fd) {
    char path[64], link[128];
    ssize_t n;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        return 0;
    link[n] = 0;
    return strstr(link, "eventfd") != NULL || strncmp(link, "pipe:", 5) == 0;
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    static int (*real)(int, int, int, struct epoll_event *);
    const char *mode = getenv("FC_EPOLL_FAIL");
    if (!real)
        real = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    if (op == EPOLL_CTL_ADD && mode) {
        int acc = 0;
        socklen_t len = sizeof acc;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0) {
            if (!acc && strchr(mode, 'c')) {
                errno = ENOSPC;
                return -1;
            }
            if (acc && strchr(mode, 'l')) {
                const char *n = getenv("FC_EPOLL_FAIL_N");
                listen_adds++;
                if (listen_adds >= 2 && listen_adds < 2 + (n ? atoi(n) : 2)) {
                    errno = ENOMEM;
                    return -1;
                }
            }
        } else if (strchr(mode, 'e') && is_wakeup_fd(fd)) {
            errno = ENOSPC;
            return -1;
        }
    }
    return real(epfd, op, fd, ev);
}
