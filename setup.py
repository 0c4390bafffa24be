"""Build hook for stek's optional C accelerator (see src/stek/hazmat/_fastcb.c).

All metadata lives in pyproject.toml.  The extension links no OpenSSL (it is
handed function pointers at run time) and is optional: where it cannot be
compiled, stek uses its pure-Python ctypes callback.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stek.hazmat._fastcb",
            ["src/stek/hazmat/_fastcb.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
