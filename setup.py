"""Build glue only: metadata lives in pyproject.toml, the C core is compiled by csrc/ffi_build.py.

edgepipe._fast (csrc/py_fast.c) is a small CPython extension beside it: the ring's non-blocking calls with
the GIL kept. It compiles no core source: it calls the functions of edgepipe._ffi through the addresses
edgepipe.ring hands it at import.
"""

from setuptools import Extension, setup

setup(
    cffi_modules=["csrc/ffi_build.py:ffibuilder"],
    ext_modules=[
        Extension(
            "edgepipe._fast",
            sources=["csrc/py_fast.c"],
            include_dirs=["csrc"],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
        )
    ],
)
