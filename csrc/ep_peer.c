/*
 * ep_peer.c: presence and liveness of the two ends of a shared segment, for the ring and the latest slot.
 *
 * Each end's presence is a struct ep_end in the segment's control block. Its owner word
 * (pid << 32 | gen << 16 | state) changes only by CAS (taking the end) or by its owner (open, close), so
 * two processes taking over the same dead end can't both win. The generation `gen` counts takeovers; it
 * ties the companion words `start` (the owner's start time, gen in its top 16 bits) and `pidns` (the
 * owner's pid namespace) to the owner they describe:
 *   open:  CAS owner -> (me, gen+1, OPENING); store pidns; store start = (gen+1, ticks) (release);
 *          store owner -> (me, gen+1, OPEN) (release)
 * A reader that finds start's gen equal to the owner's knows start and pidns are that owner's; otherwise
 * (an open in progress, or killed in progress) they are stale, the start time is taken as unknown and the
 * pid is judged by its liveness alone.
 *
 * Liveness (never kill(pid, 0): a zombie and a reused pid both answer it): a pidfd (pidfd_open) pins the
 * process that has the pid now; it fails with ESRCH if there is none, and turns readable when that process
 * exits, zombie or not. If the process it pins started at another time than the owner recorded, the owner
 * died and its pid was reused. Pids are per namespace: an owner recorded in another pid namespace can't be
 * judged from here, so it is never presumed dead (-EXDEV instead of a takeover).
 *
 * The segment: an end that keeps its own dup of the segment's fd checks on its slow paths (open, the peer
 * checks of waits and polls) that nobody truncated the segment under the mapping; the first process that
 * notices reports -EBADMSG instead of dying of SIGBUS on its next access.
 *
 * The SIGBUS guard covers the hot paths. A truncation can land between two checks, and then the next
 * memcpy into or out of the ring touches a page that no longer exists: SIGBUS (BUS_ADRERR). Wrapping
 * every copy in sigsetjmp would cost a signal-mask syscall per call; instead, a process-wide SA_SIGINFO
 * handler (installed once, at the first open of a segment that can be truncated, i.e. one not sealed
 * against shrinking: named segments, not our memfds) looks the fault address up in a lock-free registry
 * of guarded mappings. If it falls inside one, the handler maps anonymous zero pages over the rest of that
 * mapping (MAP_FIXED: the file's pages are gone anyway), sets the mapping's `hit` word and returns, so
 * the faulting instruction completes on the zero pages. The hot paths pay one relaxed load of `hit` per
 * call (ep_peer_bus_hit) before publishing or returning data, and turn it into -EBADMSG; nothing zeroed
 * is ever published or handed out by the C calls. (A zero-copy view Python already holds - a peek or
 * claim - reads zeros until its next C call reports the error.) A fault outside every guarded mapping is
 * passed on to the handler that was installed before ours (faulthandler, or the default action). A
 * handler installed after ours (e.g. faulthandler enabled later) runs first and decides.
 */
#define _GNU_SOURCE
#include "ep_peer.h"
#include "edgepipe.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define START_MASK ((1ull << 48) - 1)

static inline uint64_t owner_make(int32_t pid, uint32_t gen, uint32_t st)
{
    return ((uint64_t)(uint32_t)pid << 32) | ((uint64_t)(gen & 0xFFFFu) << 16) | st;
}

/* Start time (clock ticks since boot, field 22 of /proc/<pid>/stat) and state letter of `path`'s process;
 * 0 if it can't be read. The comm field may hold spaces and parentheses: parse after the last ')'. */
static uint64_t stat_start_ticks(const char *path, char *state)
{
    char buf[1024];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2])
        return 0;
    p += 2;                             /* field 3, the state */
    if (state)
        *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10) & START_MASK;
}

static uint64_t pid_start_ticks(int32_t pid, char *state)
{
    char path[48];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    return stat_start_ticks(path, state);
}

/* Our own start time and pid namespace: through /proc/self, because getpid() is a pid in our namespace
 * while /proc may belong to another one (a child of `unshare --pid --fork` still sees the host's /proc). */
static uint64_t self_start_ticks(void)
{
    return stat_start_ticks("/proc/self/stat", NULL);
}

static uint64_t self_pidns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Start time and pid namespace of e's owner `o`, or 0s if the companions are not (yet) that owner's. */
static void owner_facts(const struct ep_end *e, uint64_t o, uint64_t *start, uint64_t *ns)
{
    struct ep_end *m = (struct ep_end *)e;
    /* Acquire: pairs with the release of start in ep_end_open(); pidns is stored before it. */
    uint64_t s = ep_load_acquire(&m->start);
    if ((uint32_t)(s >> 48) == ep_owner_gen(o)) {
        *start = s & START_MASK;
        *ns = ep_load_relaxed(&m->pidns);
    } else {
        *start = 0;
        *ns = 0;
    }
}

static int foreign_ns(uint64_t ns, uint64_t mine)
{
    return ns && mine && ns != mine;
}

/* ------------------------------------------------------------------------------------------------ */
/* the SIGBUS guard (see the file comment) */

#define GUARD_SLOTS 256

static struct {
    _Atomic int used;                   /* claimed by an open end (CAS 0 -> 1) */
    _Atomic uintptr_t start, end;       /* the guarded mapping; start == 0 while not armed */
    _Atomic int hit;                    /* a fault inside it was absorbed */
} guard[GUARD_SLOTS];
static _Atomic int guard_installed;     /* 0 no, 1 installing, 2 installed */
static struct sigaction guard_prev;     /* written once, before the handler is installed */
static _Atomic int guard_never_hit;     /* stays 0: where bus_hit points for unguarded mappings */

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    uintptr_t a = (uintptr_t)si->si_addr;
    if (si->si_code == BUS_ADRERR) {
        for (int i = 0; i < GUARD_SLOTS; i++) {
            uintptr_t s = ep_load_acquire(&guard[i].start), e = ep_load_acquire(&guard[i].end);
            if (!s || a < s || a >= e)
                continue;
            uintptr_t page = a & ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
            /* A raw syscall: async-signal-safe in practice on Linux, which the libc wrapper is not
             * promised to be. Zero pages stand in for the truncated rest of this mapping. */
            long p = syscall(SYS_mmap, page, e - page, PROT_READ | PROT_WRITE,
                             MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == (long)page) {
                for (int j = 0; j < GUARD_SLOTS; j++) {   /* every end guarding this range */
                    uintptr_t s2 = ep_load_acquire(&guard[j].start), e2 = ep_load_acquire(&guard[j].end);
                    if (s2 && s2 < e && page < e2)
                        ep_store_relaxed(&guard[j].hit, 1);
                }
                return;                 /* the access is retried and lands on the zero pages */
            }
            break;
        }
    }
    /* Not ours: what would have happened without us. */
    if ((guard_prev.sa_flags & SA_SIGINFO) && guard_prev.sa_sigaction) {
        guard_prev.sa_sigaction(sig, si, uc);
    } else if (guard_prev.sa_handler != SIG_DFL && guard_prev.sa_handler != SIG_IGN) {
        guard_prev.sa_handler(sig);
    } else {
        /* Default action: restore it and return; the faulting access repeats and kills the process as
         * it would have (a SIGBUS sent by kill() is raised again for the same effect). */
        signal(sig, SIG_DFL);
        if (si->si_code <= 0)
            raise(sig);
    }
}

static int guard_install(void)
{
    int st = ep_load_acquire(&guard_installed);
    if (st == 2)
        return 0;
    int zero = 0;
    if (atomic_compare_exchange_strong(&guard_installed, &zero, 1)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = guard_handler;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, &guard_prev) < 0) {
            ep_store_release(&guard_installed, 0);
            return -errno;
        }
        ep_store_release(&guard_installed, 2);
        return 0;
    }
    while (ep_load_acquire(&guard_installed) == 1)
        ep_cpu_relax();                 /* another thread is installing it: a few instructions */
    return ep_load_acquire(&guard_installed) == 2 ? 0 : -EAGAIN;
}

/* Guard [base, base + size) for this end; leaves p->bus_hit at guard_never_hit if it can't. */
static void guard_arm(struct ep_peer *p, void *base, uint64_t size)
{
    if (!base || guard_install())
        return;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        int zero = 0;
        if (!atomic_compare_exchange_strong(&guard[i].used, &zero, 1))
            continue;
        ep_store_relaxed(&guard[i].hit, 0);
        ep_store_release(&guard[i].end, (uintptr_t)base + size);
        /* Release: end and hit are in place before start arms the slot; pairs with the handler's acquire. */
        ep_store_release(&guard[i].start, (uintptr_t)base);
        p->guard_slot = i;
        p->bus_hit = &guard[i].hit;
        return;
    }
}

static void guard_disarm(struct ep_peer *p)
{
    if (p->guard_slot < 0)
        return;
    int i = p->guard_slot;
    ep_store_release(&guard[i].start, (uintptr_t)0);
    ep_store_release(&guard[i].used, 0);
    p->guard_slot = -1;
    p->bus_hit = &guard_never_hit;
}

/* ------------------------------------------------------------------------------------------------ */

static void forget_pid(struct ep_peer *p)
{
    if (p->pidfd >= 0)
        close(p->pidfd);
    p->pidfd = -1;
    p->pid = 0;
    p->gen = 0;
    p->dead = 0;
}

int ep_peer_init(struct ep_peer *p, void *base, int fd, uint64_t size)
{
    memset(p, 0, sizeof(*p));
    p->pidfd = -1;
    p->segfd = -1;
    p->seg_size = size;
    p->guard_slot = -1;
    p->bus_hit = &guard_never_hit;
    p->my_ns = self_pidns();
    if (fd >= 0) {
        p->segfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (p->segfd < 0)
            return -errno;
        int rc = ep_peer_segment_check(p);
        if (rc) {
            close(p->segfd);
            p->segfd = -1;
            return rc;
        }
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK))
            guard_arm(p, base, size);   /* it can be truncated under us */
    }
    return 0;
}

void ep_peer_drop(struct ep_peer *p)
{
    forget_pid(p);
    guard_disarm(p);
    if (p->segfd >= 0)
        close(p->segfd);
    p->segfd = -1;
}

int ep_peer_segment_check(const struct ep_peer *p)
{
    struct stat st;
    if (ep_peer_bus_hit(p))
        return -EBADMSG;
    if (p->segfd < 0 || fstat(p->segfd, &st) < 0)
        return 0;
    return (uint64_t)st.st_size < p->seg_size ? -EBADMSG : 0;
}

/* Is process `pid`, owner generation `gen`, which started at `start` ticks (0: unknown), gone? */
static int pid_dead(struct ep_peer *p, int32_t pid, uint32_t gen, uint64_t start)
{
    if (pid <= 0)
        return 0;                       /* not attached yet: nobody to mourn */
    if (pid != p->pid || gen != p->gen) {
        forget_pid(p);
        p->pid = pid;
        p->gen = gen;
#ifdef SYS_pidfd_open
        p->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
        if (p->pidfd < 0 && errno == ESRCH)
            p->dead = 1;
#endif
        /* The pidfd pins whatever process has this pid now. If that one started at another time than the
         * owner recorded, the owner died and its pid was reused. */
        if (!p->dead && start) {
            uint64_t now = pid_start_ticks(pid, NULL);
            if (now && now != start)
                p->dead = 1;
        }
    }
    if (p->dead)
        return 1;
    if (p->pidfd >= 0) {
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        p->dead = poll(&pfd, 1, 0) > 0; /* a pidfd turns readable when its process exits (zombie too) */
        return p->dead;
    }
    char st = 0;
    if ((kill((pid_t)pid, 0) < 0 && errno == ESRCH) ||
        (pid_start_ticks(pid, &st) && (st == 'Z' || st == 'X')))
        p->dead = 1;                    /* no pidfd support: a zombie counts as dead too */
    return p->dead;
}

int ep_peer_check(struct ep_peer *p, struct ep_end *e)
{
    int rc = ep_peer_segment_check(p);
    if (rc)
        return rc;
    /* Acquire: pairs with the release of owner in ep_end_close() (all it published comes before) and in
     * ep_end_open() (its companions come before). */
    uint64_t o = ep_load_acquire(&e->owner);
    uint32_t st = ep_owner_state(o);
    if (st == EP_END_CLOSED)
        return -EPIPE;
    if (st != EP_END_OPEN && st != EP_END_OPENING)
        return 0;                       /* never opened: a consumer may start first */
    /* An end left OPENING is judged like an open one: a process killed inside open never finishes it. */
    uint64_t start, ns;
    owner_facts(e, o, &start, &ns);
    if (foreign_ns(ns, p->my_ns))
        return -EXDEV;
    return pid_dead(p, ep_owner_pid(o), ep_owner_gen(o), start) ? -EPIPE : 0;
}

int ep_peer_poll(struct ep_peer *p, struct ep_end *e)
{
    uint64_t o = ep_load_relaxed(&e->owner);
    if (p->dead && p->pid == ep_owner_pid(o) && p->gen == ep_owner_gen(o))
        return -EPIPE;                  /* already found dead: no need to wait for the rate limit */
    int64_t now = ep_clock_mono_ns();
    if (now < p->next_check_ns)
        return 0;
    p->next_check_ns = now + 1000000;
    return ep_peer_check(p, e);
}

/* ------------------------------------------------------------------------------------------------ */

int ep_end_open(struct ep_end *e, const struct ep_end *other, int32_t *pid_out)
{
    int32_t me = (int32_t)getpid();
    /* Read before the CAS, so the window in which the end is OPENING is two stores long. */
    uint64_t my_start = self_start_ticks(), my_ns = self_pidns();
    /* An other end held from another pid namespace: we could never tell whether it died. */
    uint64_t oo = ep_load_acquire(&((struct ep_end *)other)->owner);
    if (ep_owner_state(oo) == EP_END_OPEN || ep_owner_state(oo) == EP_END_OPENING) {
        uint64_t s, ns;
        owner_facts(other, oo, &s, &ns);
        if (foreign_ns(ns, my_ns))
            return -EXDEV;
    }
    uint64_t cur = ep_load_acquire(&e->owner);
    uint32_t gen;
    for (;;) {
        /* Busy while any live process holds the end, this one included (two handles in one process would
         * be two producers racing). A closed or dead holder may be replaced. */
        uint32_t st = ep_owner_state(cur);
        if (st == EP_END_OPEN || st == EP_END_OPENING) {
            uint64_t s, ns;
            owner_facts(e, cur, &s, &ns);
            if (foreign_ns(ns, my_ns))
                return -EXDEV;
            struct ep_peer probe;
            ep_peer_init(&probe, NULL, -1, 0);
            int dead = pid_dead(&probe, ep_owner_pid(cur), ep_owner_gen(cur), s);
            ep_peer_drop(&probe);
            if (!dead)
                return -EBUSY;
        }
        gen = (ep_owner_gen(cur) + 1u) & 0xFFFFu;
        /* Acquire (CAS): we see what a previous holder did before it let go. Pairs with ep_end_close(). */
        if (atomic_compare_exchange_strong(&e->owner, &cur, owner_make(me, gen, EP_END_OPENING)))
            break;
    }
    ep_store_relaxed(&e->pidns, my_ns);
    /* Release: pidns is in place before the start word that says whose it is. Pairs with owner_facts(). */
    ep_store_release(&e->start, ((uint64_t)gen << 48) | (my_start & START_MASK));
    ep_store_relaxed(&e->beat_ns, ep_clock_now_ns());
    /* Release: the companions are in place before the end reads as open. Pairs with ep_peer_check(). */
    ep_store_release(&e->owner, owner_make(me, gen, EP_END_OPEN));
    *pid_out = me;
    return 0;
}

void ep_end_close(struct ep_end *e, int32_t me)
{
    ep_store_relaxed(&e->beat_ns, ep_clock_now_ns());
    /* Release (the CAS): everything this end published happens before "closed". Pairs with the acquire
     * of owner in ep_peer_check() / ep_peer_closed(). Only the owner closes: if the end was taken over (we
     * were presumed dead), the new owner's state is left alone. */
    uint64_t cur = ep_load_relaxed(&e->owner);
    while (ep_owner_pid(cur) == me && ep_owner_state(cur) == EP_END_OPEN) {
        if (atomic_compare_exchange_weak(&e->owner, &cur,
                                         owner_make(me, ep_owner_gen(cur), EP_END_CLOSED)))
            break;
    }
}

void ep_end_status(const struct ep_end *e, int32_t *pid, uint32_t *closed, int64_t *beat)
{
    struct ep_end *m = (struct ep_end *)e;
    uint64_t o = ep_load_relaxed(&m->owner);
    *pid = ep_owner_pid(o);
    *closed = ep_owner_state(o) == EP_END_CLOSED;
    *beat = ep_load_relaxed(&m->beat_ns);
}
