/* libmlockall.so: keep a dynamically linked daemon resident (LD_PRELOAD it).
 *
 * A swaplab node swaps over NFS while the workload fills memory. If sshd's pages are
 * swapped out, every byte the orchestrator reads from the node waits for NFS page-ins
 * and live progress stalls for tens of seconds. Preloaded into dropbear, the constructor
 * locks all current and future mappings; memory locks are not inherited across fork(), so
 * a pthread_atfork child handler locks again in the per-connection children dropbear forks.
 * execve() drops the locks, so the commands a session runs (and the workload) stay
 * swappable and OOM-killable.
 *
 * LD_PRELOAD is removed from this process's environment at load time: the library is
 * already mapped, and nothing dropbear executes should inherit it.
 *
 * Build: gcc -O2 -shared -fPIC -o libmlockall.so mlockall.c -lpthread
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static void lock_everything(const char *when)
{
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        perror(when);
}

static void child_relock(void)
{
    lock_everything("libmlockall: mlockall in forked child");
}

__attribute__((constructor)) static void swaplab_mlockall_init(void)
{
    unsetenv("LD_PRELOAD");
    lock_everything("libmlockall: mlockall");
    if (pthread_atfork(NULL, NULL, child_relock) != 0)
        fputs("libmlockall: pthread_atfork failed\n", stderr);
}
