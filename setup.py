"""Build glue only: metadata lives in pyproject.toml, the C core is compiled by csrc/ffi_build.py."""

from setuptools import setup

setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"])
