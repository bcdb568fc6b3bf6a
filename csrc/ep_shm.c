/*
 * ep_shm.c: shared memory segments. Named POSIX segments (/dev/shm/edgepipe.<name>, created O_EXCL with
 * mode 0600) for independent processes, anonymous memfd segments for supervised ones (handed over with
 * SCM_RIGHTS or inherited, so nothing is named and nothing can leak on kill -9). Knows nothing about
 * records: the ring lays itself out inside whatever this file maps. Creating a segment reserves its
 * memory (fallocate), so an unbackable size fails at create with -ENOMEM/-ENOSPC, not later with SIGBUS.
 */
#define _GNU_SOURCE
#include "edgepipe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define EP_SHM_PREFIX "/edgepipe."

/* A name is 1..EP_SHM_NAME_MAX characters of [A-Za-z0-9._-], not starting with '.'. */
int ep_shm_name_check(const char *name)
{
    if (!name)
        return -EINVAL;
    size_t n = strlen(name);
    if (n == 0 || n > EP_SHM_NAME_MAX || name[0] == '.')
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok)
            return -EINVAL;
    }
    return 0;
}

static int full_name(const char *name, char *out, size_t cap)
{
    int rc = ep_shm_name_check(name);
    if (rc)
        return rc;
    snprintf(out, cap, EP_SHM_PREFIX "%s", name);
    return 0;
}

/* Bytes of memory a new segment may take: MemAvailable plus free swap (shmem pages can be swapped out),
 * from /proc/meminfo; UINT64_MAX if it can't be read. */
static uint64_t memory_available(void)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return UINT64_MAX;
    char line[128];
    unsigned long long kb, avail = 0, swap = 0;
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            avail = kb;
            found = 1;
        } else if (sscanf(line, "SwapFree: %llu kB", &kb) == 1) {
            swap = kb;
        }
    }
    fclose(f);
    return found ? (uint64_t)(avail + swap) * 1024u : UINT64_MAX;
}

/* Size the segment and reserve its memory now, so a ring the machine can't back is an error here
 * (-ENOMEM, or -ENOSPC from a tmpfs size limit) instead of a SIGBUS on some later write into a hole.
 * The reservation zeroes every page: it costs about as much as touching the whole ring once (measured:
 * see the commit that added it). Sizes beyond the memory available are refused before fallocate
 * starts, because shmem's fallocate would first push everything else on the machine out to get there.
 * A filesystem without fallocate (EOPNOTSUPP) keeps the old, lazy behaviour. */
static int size_fd(int fd, uint64_t size)
{
    if (size > (uint64_t)INT64_MAX)
        return -EFBIG;
    if (size > memory_available())
        return -ENOMEM;
    if (ftruncate(fd, (off_t)size) < 0)
        return -errno;
    for (;;) {
        if (fallocate(fd, 0, 0, (off_t)size) == 0)
            return 0;
        if (errno == EINTR)
            continue;                   /* a signal during a large reservation: finish it */
        if (errno == EOPNOTSUPP || errno == ENOSYS)
            return 0;
        return -errno;
    }
}

int ep_shm_create(const char *name, uint64_t size)
{
    char path[EP_SHM_NAME_MAX + 16];
    int rc = full_name(name, path, sizeof(path));
    if (rc)
        return rc;
    if (size == 0)
        return -EINVAL;
    int fd = shm_open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    rc = size_fd(fd, size);
    if (rc) {
        close(fd);
        shm_unlink(path);
        return rc;
    }
    return fd;
}

int ep_shm_open(const char *name)
{
    char path[EP_SHM_NAME_MAX + 16];
    int rc = full_name(name, path, sizeof(path));
    if (rc)
        return rc;
    int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

int ep_shm_unlink(const char *name)
{
    char path[EP_SHM_NAME_MAX + 16];
    int rc = full_name(name, path, sizeof(path));
    if (rc)
        return rc;
    return shm_unlink(path) < 0 ? -errno : 0;
}

int ep_memfd_create(const char *label, uint64_t size)
{
    if (size == 0)
        return -EINVAL;
    /* Not MFD_CLOEXEC: supervised children inherit or receive this fd on purpose. */
    int fd = memfd_create(label && *label ? label : "edgepipe", MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    int rc = size_fd(fd, size);
    if (rc) {
        close(fd);
        return rc;
    }
    /* The size is part of the ring's contract: nobody may shrink the segment under a mapped reader. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int ep_shm_size(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

int ep_shm_map(int fd, uint64_t size, void **addr)
{
    if (size == 0)
        return -EINVAL;
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    *addr = p;
    return 0;
}

int ep_shm_unmap(void *addr, uint64_t size)
{
    return munmap(addr, (size_t)size) < 0 ? -errno : 0;
}
