"""Only the extension list. Metadata lives in pyproject.toml.

FASTC1K_NO_EXTENSIONS=1 builds a pure-Python package (the engine falls back to _core_py).
FASTC1K_DEBUG=1 builds with assertions and the debug macro on (make debug).
FASTC1K_SANITIZE=1 builds with ASan + UBSan (make test-asan).
FASTC1K_ONLY=fastc1k._core builds only the named extensions (development).
FASTC1K_NO_URING=1 builds the C engine without its io_uring backend (epoll only).
"""
import os
import shutil
import subprocess

from setuptools import setup

ext_modules = []
# what the io_uring backend uses from liburing (2.3+): a header without it builds epoll only
_LIBURING_PROBE = """#include <liburing.h>
int f(struct io_uring *r, struct io_uring_sqe *s, struct io_uring_buf_reg *g) {
    io_uring_prep_recv_multishot(s, 0, 0, 0, 0);
    io_uring_prep_multishot_accept(s, 0, 0, 0, 0);
    return io_uring_register_buf_ring(r, g, 0) + IORING_SETUP_DEFER_TASKRUN;
}
"""
if not os.environ.get("FASTC1K_NO_EXTENSIONS"):
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = bool(os.environ.get("FASTC1K_DEBUG"))
    sanitize = bool(os.environ.get("FASTC1K_SANITIZE"))
    cflags = ["-O0", "-g", "-DFASTC1K_DEBUG=1"] if debug else ["-O2", "-DNDEBUG"]
    ldflags = []
    if sanitize:
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        ldflags += ["-fsanitize=address,undefined"]
    macros = [("CYTHON_TRACE", "0")]

    def liburing():
        """(macros, objects, libraries) of the io_uring backend: liburing.a linked in when the
        compiler finds it (a wheel then needs no liburing.so), else -luring, else nothing (the
        backend then reports itself unavailable and the engine serves with epoll)."""
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if os.environ.get("FASTC1K_NO_URING") or cc is None:
            return [], [], []
        probe = subprocess.run([cc, "-fsyntax-only", "-x", "c", "-"], input=_LIBURING_PROBE,
                               capture_output=True, text=True)
        if probe.returncode != 0:
            return [], [], []
        static = subprocess.run([cc, "-print-file-name=liburing.a"], capture_output=True, text=True).stdout.strip()
        if os.path.isabs(static) and os.path.exists(static):
            return [("FASTC1K_HAVE_LIBURING", "1")], [static], []
        return [("FASTC1K_HAVE_LIBURING", "1")], [], ["uring"]

    def ext(name, source, uring=False):
        umacros, objects, libraries = liburing() if uring else ([], [], [])
        return Extension(
            name,
            [source],
            include_dirs=["src/fastc1k", "src/fastc1k/includes", "src/fastc1k/core"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            extra_objects=objects,
            libraries=libraries,
            define_macros=macros + umacros,
        )

    extensions = [
        ext("fastc1k._core", "src/fastc1k/_core.pyx", uring=True),
        ext("fastc1k.load._client", "src/fastc1k/load/_client.pyx"),
    ]
    only = os.environ.get("FASTC1K_ONLY")  # e.g. fastc1k._core: build just that one (development)
    if only:
        extensions = [e for e in extensions if e.name in only.split(",")]
    ext_modules = cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
        compile_time_env={"FASTC1K_DEBUG": debug},
    )

setup(ext_modules=ext_modules)
