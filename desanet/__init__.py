"""desanet: will each village's video call hold up?

One import package for the whole distribution. Its subpackages live at the top of the repository
(probes/, exporter/, lab/, …) and are mapped here by pyproject.toml's package-dir when installed; the
symlinks in this folder give a plain checkout (pytest, mypy, import-linter) the same tree the wheel has.
The layers and what each may import: docs/layout.md and .importlinter.
"""

__version__ = "0.1.0"
