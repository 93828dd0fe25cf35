"""The one compiled part of acbmse_cli: the CPU pass of ``acbmse eval`` (acbmse_cli/_native.c).

Everything else is declared in pyproject.toml.  The extension is optional: where it cannot be
built (no C compiler), the package installs without it and evaluates with torch instead.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: gcc and clang: full optimisation, sums that may be reassociated (to run in vector lanes); NaN and
#: Inf keep their meaning (no -ffinite-math-only).
_UNIX_FLAGS = [
    "-O3", "-std=c11", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
]  # fmt: skip


class _BuildExt(build_ext):
    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for extension in self.extensions:
                extension.extra_compile_args = [*extension.extra_compile_args, *_UNIX_FLAGS]
        super().build_extensions()


setup(
    ext_modules=[Extension("acbmse_cli._native", ["acbmse_cli/_native.c"], optional=True)],
    cmdclass={"build_ext": _BuildExt},
)
