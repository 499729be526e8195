"""covid-cxr packaging.

The repository root *is* the ``covid_cxr`` package: ``package_dir`` maps it so that ``pipeline/``,
``data/``, ``trainer/`` ... install as ``covid_cxr.pipeline`` etc. instead of polluting
site-packages with generic top-level names.
"""
import re

from setuptools import find_packages, setup

# The one copy of the version is __init__.py's __version__ (`covid-cxr --version` prints it without
# reading installed metadata, which an editable install leaves stale): read, not imported, here.
with open("__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
SUBPACKAGES = find_packages(where=".", exclude=["tests", "tests.*"])

setup(
    name="covid-cxr",
    version=VERSION,
    description="TFX pipeline: public chest X-ray collections to a gated, servable COVID-19 classifier",
    python_requires=">=3.9",
    package_dir={"covid_cxr": "."},
    packages=["covid_cxr"] + [f"covid_cxr.{p}" for p in SUBPACKAGES],
    package_data={"covid_cxr.pipeline": ["presets/*.yaml", "schema/*.pbtxt"]},
    install_requires=[
        line.split("#")[0].strip()
        for line in open("requirements.txt", encoding="utf-8")
        if line.split("#")[0].strip()
    ],
    entry_points={"console_scripts": ["covid-cxr=covid_cxr.cli:main"]},
)
