"""The one compiled part: the flight recorder's record writer (killswitch/runtime/_ringwrite.c).

Everything else is in pyproject.toml. The extension is optional: on a machine without a C
compiler or Python's headers the build goes on without it and the recorder runs its Python
writer (docs/RECORDER.md, "The writer"); `./dev test` fails when it did not build where it
can. KILLSWITCH_NO_NATIVE=1 leaves it out on purpose: a pure wheel, installable on any
Python (the offline stack image does this when the host's Python is not the image's).
"""

import os

from setuptools import Extension, setup

RINGWRITE = Extension(
    "killswitch.runtime._ringwrite",
    ["killswitch/runtime/_ringwrite.c"],
    optional=True,
    extra_compile_args=["-O2", "-Wall"],
)

setup(ext_modules=[] if os.environ.get("KILLSWITCH_NO_NATIVE") == "1" else [RINGWRITE])
