/*
 * swaplab-node: the one static helper swaplab puts on every node (/usr/bin/swaplab-node).
 *
 *   swaplab-node clock                    CLOCK_REALTIME in ns, one line
 *   swaplab-node clock-serve              one CLOCK_REALTIME line per line read on stdin
 *   swaplab-node sample [--interval-ms N] kernel counters every N ms until killed
 *   swaplab-node hog --mib N [--passes P] [--start-at NS] [--seed S]
 *                                         memory pressure, every page verified
 *   swaplab-node limits                   the argument limits below, one `name value` line
 *                                         each, sorted by name
 *
 * Output is a line protocol parsed by the orchestrator; stdout is flushed after every
 * line (hog) or tick (sample) so nothing sits in a buffer when the node dies.
 * Every numeric argument has a named limit (HOG_*, SAMPLE_*): the checks use it and
 * `limits` prints it. model/limits.py holds the same values so a campaign is refused at
 * validation rather than here at run time (where a refusal looks like a kernel fault);
 * tests/unit/test_node_tool_limits.py fails when the two differ.
 * Exit codes: 0 ok, 2 usage, 3 hog found corrupt pages, 1 other failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define MIB (1024u * 1024u)
#define PROGRESS_MIB 16u
#define MAX_CORRUPT_LINES 10u
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

/* Argument limits, inclusive. An integer argument outside them is a usage error (exit 2). */
#define HOG_MIB_MIN 1ull
#define HOG_MIB_MAX (1ull << 20) /* 1 TiB: one mapping, well inside 64-bit size_t and x86_64's 128 TiB */
#define HOG_PAGES_MAX (HOG_MIB_MAX * (MIB / PAGE))
#define HOG_PASSES_MIN 1ull
/* passes x pages is the count of checked pages (the `done ... pages=` field): 64 bits. */
#define HOG_PASSES_MAX (UINT64_MAX / HOG_PAGES_MAX)
#define HOG_SEED_MIN 0ull
#define HOG_SEED_MAX UINT64_MAX /* any 64-bit value is a seed */
#define HOG_START_AT_MIN 0ull /* an instant already past: start at once */
/* CLOCK_REALTIME ns; UINT64_MAX / NS_PER_S seconds (year 2554) still fits a 64-bit time_t. */
#define HOG_START_AT_MAX UINT64_MAX
#define SAMPLE_INTERVAL_MS_MIN 1ull
/* The next tick's deadline is tv_nsec + interval in ns, computed in 64 bits. */
#define SAMPLE_INTERVAL_MS_MAX ((UINT64_MAX - (NS_PER_S - 1)) / NS_PER_MS)

struct limit {
    const char *name;
    uint64_t value;
};

/* What `limits` prints, in this order: keep it sorted by name. */
static const struct limit arg_limits[] = {
    {"hog_mib_max", HOG_MIB_MAX},
    {"hog_mib_min", HOG_MIB_MIN},
    {"hog_passes_max", HOG_PASSES_MAX},
    {"hog_passes_min", HOG_PASSES_MIN},
    {"hog_seed_max", HOG_SEED_MAX},
    {"hog_seed_min", HOG_SEED_MIN},
    {"hog_start_at_max", HOG_START_AT_MAX},
    {"hog_start_at_min", HOG_START_AT_MIN},
    {"sample_interval_ms_max", SAMPLE_INTERVAL_MS_MAX},
    {"sample_interval_ms_min", SAMPLE_INTERVAL_MS_MIN},
};

static const char *const sample_files[] = {
    "/proc/vmstat", "/proc/meminfo", "/proc/pressure/memory",
    "/proc/net/rpc/nfs", "/proc/net/netstat", "/proc/net/snmp",
};

/* /proc files are small (netstat ~3 KiB, meminfo ~1.5 KiB); one static buffer, no malloc. */
static char file_buf[1 << 16];

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("swaplab-node: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nusage: swaplab-node clock\n"
          "       swaplab-node clock-serve\n"
          "       swaplab-node sample [--interval-ms N]\n"
          "       swaplab-node hog --mib N [--passes P] [--start-at NS] [--seed S]\n"
          "       swaplab-node limits\n",
          stderr);
    return 2;
}

static uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* Strict unsigned parse: the whole string must be digits (no sign, no junk). */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* The value after argv[*i], consuming it; NULL when the flag is the last argument. */
static const char *flag_value(int argc, char **argv, int *i)
{
    return *i + 1 < argc ? argv[++*i] : NULL;
}

/* An integer argument within its limits, or the usage error naming them. */
static int parse_arg(const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    if (parse_u64(s, &v) == 0 && v >= min && v <= max) {
        *out = v;
        return 0;
    }
    return usage("%s needs an integer in %llu..%llu, got '%s'", flag, (unsigned long long)min,
                 (unsigned long long)max, s != NULL ? s : "nothing");
}

/* Write all of buf; a closed stdout (EPIPE) means the reader is gone: stop quietly. */
static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(0);
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0)
        write_all(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* ------------------------------------------------------------------ clock */

static int cmd_clock(int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return usage("clock takes no arguments");
    emit("%llu\n", (unsigned long long)now_ns(CLOCK_REALTIME));
    return 0;
}

/* Clock exchanges over one open channel: the orchestrator writes a line and reads the
 * node's time back. Opening a channel per exchange costs tens of ms of round trip on a
 * TCG guest; a resident reader answers in a few, which bounds the offset's uncertainty. */
static int cmd_clock_serve(int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return usage("clock-serve takes no arguments");
    mlockall(MCL_CURRENT | MCL_FUTURE);
    char line[64];
    while (fgets(line, sizeof line, stdin) != NULL)
        emit("%llu\n", (unsigned long long)now_ns(CLOCK_REALTIME));
    return 0;
}

/* ------------------------------------------------------------------ sample */

static void emit_file(const char *path)
{
    emit("## %s\n", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* absent (no PSI, no NFS client yet): header only, by contract */
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, file_buf + used, sizeof file_buf - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        used += (size_t)n;
        if (used >= sizeof file_buf - 1)
            break;
    }
    close(fd);
    if (used > 0 && file_buf[used - 1] != '\n')
        file_buf[used++] = '\n'; /* keep the next header on its own line */
    write_all(file_buf, used);
}

static void set_oom_score_adj(const char *value, int loud)
{
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    ssize_t len = (ssize_t)strlen(value);
    if ((fd < 0 || write(fd, value, (size_t)len) != len) && loud)
        perror("swaplab-node: oom_score_adj");
    if (fd >= 0)
        close(fd);
}

static void prepare_sampler(void)
{
    /* The sampler must keep reporting while the hog drives the node into swap: never
     * page it out and never let the OOM killer pick it. */
    if (mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        perror("swaplab-node: mlockall");
    set_oom_score_adj("-1000", 1);
}

static int cmd_sample(int argc, char **argv)
{
    uint64_t interval_ms = 1000;
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--interval-ms") != 0)
            return usage("unknown sample argument '%s'", flag);
        int rc = parse_arg(flag, flag_value(argc, argv, &i), SAMPLE_INTERVAL_MS_MIN,
                           SAMPLE_INTERVAL_MS_MAX, &interval_ms);
        if (rc != 0)
            return rc;
    }
    prepare_sampler();
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        emit("@@ %llu %llu\n", (unsigned long long)now_ns(CLOCK_REALTIME),
             (unsigned long long)now_ns(CLOCK_MONOTONIC));
        for (size_t f = 0; f < sizeof sample_files / sizeof sample_files[0]; f++)
            emit_file(sample_files[f]);
        emit("@@end\n");
        /* Absolute deadlines: a slow tick does not push every later tick back. */
        uint64_t ns = (uint64_t)next.tv_nsec + interval_ms * NS_PER_MS;
        next.tv_sec += (time_t)(ns / NS_PER_S);
        next.tv_nsec = (long)(ns % NS_PER_S);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
    }
}

/* ------------------------------------------------------------------ limits */

static int cmd_limits(int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return usage("limits takes no arguments");
    for (size_t i = 0; i < sizeof arg_limits / sizeof arg_limits[0]; i++)
        emit("%s %llu\n", arg_limits[i].name, (unsigned long long)arg_limits[i].value);
    return 0;
}

/* ------------------------------------------------------------------ hog */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One seed per (seed, pass, page): a page swapped back from the wrong slot, from an older
 * pass or from another offset cannot match. */
static uint64_t page_seed(uint64_t seed, uint64_t pass, uint64_t page)
{
    uint64_t s = seed ^ 0x5157415041424C41ull; /* "SWAPLABA": seed 0 is not a weak state */
    uint64_t h = splitmix64(&s);
    s = h ^ (pass * 0xD6E8FEB86659FD93ull);
    h = splitmix64(&s);
    s = h ^ (page * 0xA0761D6478BD642Full);
    return splitmix64(&s);
}

/* xorshift64* over the whole page: incompressible, never constant, never all zero. */
static void fill_page(uint64_t *words, uint64_t state)
{
    if (state == 0)
        state = 1;
    for (unsigned i = 0; i < PAGE / 8; i++) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        words[i] = state * 0x2545F4914F6CDD1Dull;
    }
}

static int check_page(const uint64_t *words, uint64_t state)
{
    static uint64_t expect[PAGE / 8];
    fill_page(expect, state);
    return memcmp(words, expect, PAGE) == 0;
}

struct hog_args {
    uint64_t mib, passes, seed, start_at;
    int has_start;
};

/* One hog flag: its value, checked against its limits. */
static int parse_hog_flag(const char *flag, const char *s, struct hog_args *a)
{
    if (strcmp(flag, "--mib") == 0)
        return parse_arg(flag, s, HOG_MIB_MIN, HOG_MIB_MAX, &a->mib);
    if (strcmp(flag, "--passes") == 0)
        return parse_arg(flag, s, HOG_PASSES_MIN, HOG_PASSES_MAX, &a->passes);
    if (strcmp(flag, "--seed") == 0)
        return parse_arg(flag, s, HOG_SEED_MIN, HOG_SEED_MAX, &a->seed);
    if (strcmp(flag, "--start-at") == 0) {
        a->has_start = 1;
        return parse_arg(flag, s, HOG_START_AT_MIN, HOG_START_AT_MAX, &a->start_at);
    }
    return usage("unknown hog argument '%s'", flag);
}

static int parse_hog(int argc, char **argv, struct hog_args *a)
{
    *a = (struct hog_args){.mib = 0, .passes = 1, .seed = 1, .start_at = 0, .has_start = 0};
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i]; /* before flag_value moves i on */
        int rc = parse_hog_flag(flag, flag_value(argc, argv, &i), a);
        if (rc != 0)
            return rc;
    }
    /* 0 is below HOG_MIB_MIN, so it can only mean the flag was never given. */
    if (a->mib == 0)
        return usage("--mib N is required (%llu..%llu)", HOG_MIB_MIN, HOG_MIB_MAX);
    return 0;
}

static void wait_until_realtime(uint64_t at_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(at_ns / NS_PER_S), .tv_nsec = (long)(at_ns % NS_PER_S)};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void report_progress(const char *phase, uint64_t pass, uint64_t page, uint64_t pages)
{
    uint64_t done = page + 1;
    if (done % (PROGRESS_MIB * MIB / PAGE) == 0 || done == pages)
        emit("progress %s %llu %llu\n", phase, (unsigned long long)pass,
             (unsigned long long)(done * PAGE / MIB));
}

static int cmd_hog(int argc, char **argv)
{
    struct hog_args a;
    int rc = parse_hog(argc, argv, &a);
    if (rc != 0)
        return rc;
    /* Commands started over SSH inherit sshd's -1000; the hog is the process the OOM
     * killer should pick, so drop that protection (best effort: fails unprivileged). */
    set_oom_score_adj("0", 0);
    size_t bytes = (size_t)a.mib * MIB;
    uint64_t pages = bytes / PAGE;
    /* MAP_NORESERVE: the heuristic overcommit check would refuse a mapping larger than
       RAM + swap up front; a campaign that opted into OOM wants the OOM killer instead. */
    unsigned char *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                              -1, 0);
    if (mem == MAP_FAILED) {
        perror("swaplab-node: mmap");
        return 1;
    }
    /* Wake-up time read in-process right after the barrier: no fork, no shell, no skew. */
    if (a.has_start)
        wait_until_realtime(a.start_at);
    uint64_t t0 = now_ns(CLOCK_REALTIME);
    emit("started %llu\n", (unsigned long long)t0);
    uint64_t m0 = now_ns(CLOCK_MONOTONIC), checked = 0, bad = 0;
    for (uint64_t p = 1; p <= a.passes; p++) {
        for (uint64_t i = 0; i < pages; i++) {
            fill_page((uint64_t *)(mem + i * PAGE), page_seed(a.seed, p, i));
            report_progress("write", p, i, pages);
        }
        for (uint64_t i = 0; i < pages; i++) {
            checked++;
            if (!check_page((uint64_t *)(mem + i * PAGE), page_seed(a.seed, p, i))) {
                if (bad++ < MAX_CORRUPT_LINES)
                    emit("corrupt page=%llu pass=%llu\n", (unsigned long long)i,
                         (unsigned long long)p);
            }
            report_progress("verify", p, i, pages);
        }
    }
    emit("done mib=%llu passes=%llu pages=%llu bad=%llu elapsed_ns=%llu\n",
         (unsigned long long)a.mib, (unsigned long long)a.passes, (unsigned long long)checked,
         (unsigned long long)bad, (unsigned long long)(now_ns(CLOCK_MONOTONIC) - m0));
    return bad == 0 ? 0 : 3;
}

int main(int argc, char **argv)
{
    /* A vanished reader must end us with EPIPE in write_all, not SIGPIPE mid-line. */
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2)
        return usage("missing subcommand");
    if (strcmp(argv[1], "clock") == 0)
        return cmd_clock(argc - 2, argv + 2);
    if (strcmp(argv[1], "clock-serve") == 0)
        return cmd_clock_serve(argc - 2, argv + 2);
    if (strcmp(argv[1], "sample") == 0)
        return cmd_sample(argc - 2, argv + 2);
    if (strcmp(argv[1], "hog") == 0)
        return cmd_hog(argc - 2, argv + 2);
    if (strcmp(argv[1], "limits") == 0)
        return cmd_limits(argc - 2, argv + 2);
    return usage("unknown subcommand");
}
