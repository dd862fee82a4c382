# C declarations the load client needs that Cython's bundled .pxd files lack.
# Mirrors the system headers and nothing else.
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum: CLOCK_MONOTONIC

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev)
    int epoll_wait(int epfd, epoll_event *evs, int maxevents, int timeout)

cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    cdef struct sockaddr:
        sa_family_t sa_family
    enum:
        AF_INET
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_ERROR
        SO_LINGER
        MSG_NOSIGNAL
        MSG_DONTWAIT
    cdef struct linger:
        int l_onoff
        int l_linger
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)

cdef extern from "<netinet/in.h>" nogil:
    ctypedef uint32_t in_addr_t
    cdef struct in_addr:
        in_addr_t s_addr
    cdef struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr
    enum:
        IPPROTO_TCP
        IPPROTO_IP

cdef extern from "<netinet/tcp.h>" nogil:
    enum: TCP_NODELAY

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EINPROGRESS
        ECONNREFUSED
        ECONNRESET
        ECONNABORTED
        EPIPE
        ETIMEDOUT
        EADDRNOTAVAIL
        EADDRINUSE
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        ENOSYS

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
