# The read-buffer pool: slabs of `grow` buffers, a LIFO free list (hot buffers stay in
# cache), growth up to `max`, then NULL (the caller sheds load and counts it).

@cython.cdivision(True)  # size >= 1 (ServerConfig.pool_size)
cdef int pool_init(Pool *p, uint32_t bufsize, uint32_t size, uint32_t maxn) noexcept nogil:
    memset(p, 0, sizeof(Pool))
    p.bufsize = bufsize
    p.grow = size
    p.max = maxn
    p.free = <char **>malloc(maxn * sizeof(char *))
    p.slabs = <char **>malloc(((maxn + size - 1) // size + 1) * sizeof(char *))
    if p.free == NULL or p.slabs == NULL:
        return -1
    return pool_grow(p)


cdef int pool_grow(Pool *p) noexcept nogil:
    cdef uint32_t k = p.grow, i
    cdef char *slab
    if p.total + k > p.max:
        k = p.max - p.total
    if k == 0:
        return -1
    slab = <char *>malloc(<size_t>k * p.bufsize)
    if slab == NULL:
        return -1
    p.slabs[p.nslabs] = slab
    p.nslabs += 1
    for i in range(k):
        p.free[p.nfree] = slab + <size_t>(k - 1 - i) * p.bufsize
        p.nfree += 1
    p.total += k
    return 0


cdef inline char *pool_get(Pool *p) noexcept nogil:
    if p.nfree == 0 and pool_grow(p) < 0:
        return NULL
    p.nfree -= 1
    if p.total - p.nfree > p.peak:
        p.peak = p.total - p.nfree
    return p.free[p.nfree]


cdef inline void pool_put(Pool *p, char *b) noexcept nogil:
    FC_ASSERT(p.nfree < p.total)
    p.free[p.nfree] = b
    p.nfree += 1


cdef void pool_free(Pool *p) noexcept nogil:
    cdef uint32_t i
    for i in range(p.nslabs):
        free(p.slabs[i])
    free(p.slabs)
    free(p.free)
    memset(p, 0, sizeof(Pool))
