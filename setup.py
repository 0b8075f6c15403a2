"""The metadata is in setup.cfg; this file only declares the one C extension."""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("pipeline.imaging._resample", ["pipeline/imaging/_resample.c"], extra_compile_args=["-O3"])]
)
