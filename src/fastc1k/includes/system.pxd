# Extern declarations of the Linux/POSIX calls the C engine makes (nothing else lives here).
from libc.stdint cimport uint32_t, uint64_t, int64_t


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    struct epoll_event:
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
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef uint32_t socklen_t
    struct sockaddr:
        pass
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SHUT_WR
    int accept4(int sockfd, sockaddr *addr, socklen_t *addrlen, int flags)
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    enum:
        MSG_PEEK
        MSG_DONTWAIT
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    int shutdown(int sockfd, int how)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)
    int getpid()


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
        int tm_wday
    enum:
        CLOCK_MONOTONIC
        CLOCK_MONOTONIC_COARSE
        CLOCK_REALTIME
        CLOCK_REALTIME_COARSE
    int clock_gettime(int clk_id, timespec *tp)
    tm *gmtime_r(const time_t *timep, tm *result)


cdef extern from "<sys/resource.h>" nogil:
    ctypedef unsigned long rlim_t
    struct rlimit:
        rlim_t rlim_cur
        rlim_t rlim_max
    enum:
        RLIMIT_NOFILE
    int getrlimit(int resource, rlimit *rlim)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        ECONNABORTED
        EPROTO


cdef extern from "<string.h>" nogil:
    void *memchr(const void *s, int c, size_t n)
    void *memcpy(void *dest, const void *src, size_t n)
    void *memmove(void *dest, const void *src, size_t n)
    void *memset(void *s, int c, size_t n)
    int memcmp(const void *s1, const void *s2, size_t n)


cdef extern from "<stdlib.h>" nogil:
    void *malloc(size_t size)
    void *calloc(size_t nmemb, size_t size)
    void free(void *ptr)


cdef extern from "<stdio.h>" nogil:
    int snprintf(char *s, size_t n, const char *fmt, ...)
