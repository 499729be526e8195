"""covid-cxr packaging.

The repository root *is* the ``covid_cxr`` package: ``package_dir`` maps it so that ``pipeline/``,
``data/``, ``trainer/`` ... install as ``covid_cxr.pipeline`` etc. instead of polluting
site-packages with generic top-level names.
"""
from setuptools import find_packages, setup

SUBPACKAGES = find_packages(where=".", exclude=["tests", "tests.*"])

setup(
    name="covid-cxr",
    version="0.1.0",
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
