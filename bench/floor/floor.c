/* The floor: the least an epoll HTTP/1.1 responder can do per request on this kernel.
 *
 * NOT A SERVER FOR USERS: no parser, no limits, no timeouts, no partial-write handling.
 * It answers every "\r\n\r\n" it sees with the same /api/health response fastc1k sends
 * (same headers and body), using one recv and one send per batch of requests and nothing
 * else, so the bench can draw the kernel's floor from a measurement. bench/servers.py
 * compiles it at run time with gcc -O2. Usage: floor PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536
#define RBUF 16384
static char rbuf[RBUF], resp[256], out[(RBUF / 4 + 1) * 160];
static unsigned char state[MAXFD];  /* per fd: how much of "\r\n\r\n" is matched so far */
static int resp_len;
static time_t resp_sec;

static void build_resp(time_t now) {  /* Date rewritten once a second; time() is vDSO, no syscall */
    char date[64];
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime(&now));
    resp_len = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nServer: fastc1k\r\nContent-Type: "
                        "application/json\r\nContent-Length: 15\r\nDate: %s\r\n\r\n{\"status\":\"ok\"}", date);
    resp_sec = now;
}

int main(int argc, char **argv) {
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), ep = epoll_create1(0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(argc > 1 ? atoi(argv[1]) : 8080)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 4096)) { perror("floor"); return 1; }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    build_resp(time(NULL));
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    state[c] = 0;
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t r = recv(fd, rbuf, RBUF, 0);
            if (r <= 0) { close(fd); continue; }
            int k = 0, s = state[fd];
            for (ssize_t j = 0; j < r; j++) {  /* count request ends, across reads */
                char ch = rbuf[j];
                s = (ch == ((s & 1) ? '\n' : '\r')) ? s + 1 : (ch == '\r');
                if (s == 4) { k++; s = 0; }
            }
            state[fd] = (unsigned char)s;
            if (!k) continue;
            time_t now = time(NULL);
            if (now != resp_sec) build_resp(now);
            for (int j = 0; j < k; j++) memcpy(out + j * resp_len, resp, resp_len);
            send(fd, out, (size_t)k * resp_len, MSG_NOSIGNAL);
        }
    }
}
