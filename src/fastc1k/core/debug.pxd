cdef extern from "debug.h" nogil:
    const int FASTC1K_DEBUG
    void FC_DBG(const char *fmt, ...)
    void FC_ASSERT(bint cond)
