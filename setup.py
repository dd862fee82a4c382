"""Only the extension list. Metadata lives in pyproject.toml.

FASTC1K_NO_EXTENSIONS=1 builds a pure-Python package (the engine falls back to _core_py).
FASTC1K_DEBUG=1 builds with assertions and the debug macro on (make debug).
FASTC1K_SANITIZE=1 builds with ASan + UBSan (make test-asan).
FASTC1K_ONLY=fastc1k._core builds only the named extensions (development).
"""
import os

from setuptools import setup

ext_modules = []
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

    def ext(name, source):
        return Extension(
            name,
            [source],
            include_dirs=["src/fastc1k", "src/fastc1k/includes", "src/fastc1k/core"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            define_macros=macros,
        )

    extensions = [
        ext("fastc1k._core", "src/fastc1k/_core.pyx"),
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
