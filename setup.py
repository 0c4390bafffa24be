"""Build hook for stek's optional C accelerator (see src/stek/hazmat/_fastcb.c).

All metadata lives in pyproject.toml.  The extension links no OpenSSL (it is
handed function pointers at run time) and is optional: where it cannot be
compiled, stek uses its pure-Python ctypes callback.

It is built against CPython 3.10's limited API, so one ``cp310-abi3`` wheel
serves 3.10 and every later CPython (scripts/build-wheel.sh builds and tags it).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stek.hazmat._fastcb",
            ["src/stek/hazmat/_fastcb.c"],
            define_macros=[("Py_LIMITED_API", "0x030A0000")],
            py_limited_api=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
    # The wheel's tag: cp310-abi3, installable on CPython 3.10 and later.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
