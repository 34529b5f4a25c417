"""Install the IODINE research package (``lib``) in editable mode: ``pip install -e .``."""

from setuptools import find_packages, setup

with open("requirements.txt", encoding="utf-8") as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="iodine-pytorch",
    version="0.1.0",
    description="Faithful, fast PyTorch implementation of IODINE (Greff et al., ICML 2019)",
    packages=find_packages(include=["lib", "lib.*"]),
    python_requires=">=3.9",
    install_requires=requirements,
)
