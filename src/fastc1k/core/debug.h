/* FC_DBG / FC_ASSERT: compiled away unless built with FASTC1K_DEBUG=1 (make debug). */
#ifndef FASTC1K_CORE_DEBUG_H
#define FASTC1K_CORE_DEBUG_H
#include <stdio.h>
#include <stdlib.h>
#ifndef FASTC1K_DEBUG
#define FASTC1K_DEBUG 0
#endif
#if FASTC1K_DEBUG
#define FC_DBG(...) (fputs("fastc1k[c]: ", stderr), fprintf(stderr, __VA_ARGS__))
#define FC_ASSERT(x) do { if (!(x)) { fprintf(stderr, "fastc1k[c]: assertion %s failed at %s:%d\n", \
                                               #x, __FILE__, __LINE__); abort(); } } while (0)
#else
#define FC_DBG(...) ((void)0)
#define FC_ASSERT(x) ((void)0)
#endif
#endif
