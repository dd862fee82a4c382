# What the load client needs beyond fastc1k/includes/system.pxd (the shared extern
# declarations of both extensions).
from fastc1k.includes.system cimport epoll_event, timespec

# epoll_pwait2 (Linux 5.11) by syscall number: glibc has a wrapper only from 2.35, and
# manylinux/musllinux build images are older. ENOSYS at run time falls back to epoll_wait.
cdef extern from *:
    """
    #include <sys/syscall.h>
    #include <unistd.h>
    #ifndef SYS_epoll_pwait2
    #define SYS_epoll_pwait2 441
    #endif
    static int fc1k_epoll_pwait2(int ep, struct epoll_event *evs, int n, const struct timespec *ts) {
        return (int)syscall(SYS_epoll_pwait2, ep, evs, n, ts, (void *)0, (size_t)0);
    }
    """
    int fc1k_epoll_pwait2(int ep, epoll_event *evs, int n, const timespec *ts) nogil
