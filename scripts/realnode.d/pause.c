/* The sandbox ("pause") process of every pod on the real node: holds the pod's namespaces and ends on
 * SIGTERM or SIGINT. Built with gcc -static by scripts/realnode, so its image is this one file. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;) pause();
}
