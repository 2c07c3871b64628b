"""Build script: the package, plus the repository's top-level data folders mapped into it as package data.

Everything else lives in pyproject.toml; this file exists only because the mapping of folders outside the package
(``package_dir``) needs the computed package list.
"""

from setuptools import find_packages, setup

# The repository keeps these at its top level (the layout the project is known by); in the wheel they sit inside
# flashvsr_q/shipped/ so that an installed flashvsr-q finds them (flashvsr_q.shipped).
SHIPPED = {
    "flashvsr_q.shipped.recipes": "recipes",
    "flashvsr_q.shipped.calibration": "calibration",
    "flashvsr_q.shipped.flashvsr_small": "checkpoints/flashvsr-small",
}

setup(
    packages=find_packages(include=["flashvsr_q", "flashvsr_q.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={"flashvsr_q": ["py.typed"], **{name: ["*"] for name in SHIPPED}},
)
