/* The bench's baseline: a socket-activated responder that does nothing of its own.
 * Takes the listening socket systemd passes as fd 3 (Accept=no), tells systemd READY=1
 * (Type=notify, like our services), then answers every connection with one fixed HTTP 200. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void notify_ready(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof sa.sun_path) return;
    strcpy(sa.sun_path, path);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + strlen(path));
    close(fd);
}

int main(void) {
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               "Content-Length: 17\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}\r\n";
    char buf[4096];
    notify_ready();
    for (;;) {
        int c = accept(3, NULL, NULL);
        if (c < 0) return 1; /* not a listening socket: let systemd report the failure */
        /* Read the request head (until a blank line), then answer. */
        size_t n = 0;
        ssize_t r;
        while (n < sizeof buf - 1 && (r = read(c, buf + n, sizeof buf - 1 - n)) > 0) {
            n += (size_t)r;
            buf[n] = 0;
            if (strstr(buf, "\r\n\r\n")) break;
        }
        if (write(c, resp, sizeof resp - 1) < 0) { /* the client went away: nothing to do */ }
        close(c);
    }
}
