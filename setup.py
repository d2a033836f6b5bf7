"""Builds the Cython hot path in ext/ into tickcast._* extension modules.

Package metadata lives in pyproject.toml; this file only lists the extensions.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = ["_frames", "_bitsets", "_fanout", "_reader", "_socket", "_http", "_handshake"]

setup(
    ext_modules=cythonize(
        [Extension(f"tickcast.{name}", [f"ext/tickcast/{name}.pyx"],
                   include_dirs=["ext/tickcast"], extra_compile_args=["-O3"]) for name in MODULES],
        include_path=["ext"],
        build_dir="build/cython",
        compiler_directives={"language_level": 3},
    ),
)
