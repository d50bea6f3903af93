"""The one compiled part: the flight recorder's record writer (killswitch/runtime/_ringwrite.c).

Everything else is in pyproject.toml. The extension is optional: on a machine without a C
compiler or Python's headers the build goes on without it, and the recorder runs its Python
writer (docs/RECORDER.md, "The writer"); `./dev test` fails when it did not build where it can.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "killswitch.runtime._ringwrite",
            ["killswitch/runtime/_ringwrite.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
