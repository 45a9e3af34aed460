"""mmctr_tf: multimodal CTR prediction (DMAE, Diff-MSIN and baselines) in Keras 3 on TensorFlow.

TensorFlow comes from exactly one extra, never both: `cpu` (tensorflow-cpu, the default for CPU machines and CI)
or `gpu` (tensorflow[and-cuda]). Installing both wheels into one environment breaks TensorFlow.
"""

from setuptools import find_packages, setup

TF = "2.21.*"

setup(
    name="mmctr_tf",
    version="0.1.0",
    description="Multimodal CTR prediction: DMAE and Diff-MSIN re-implemented in Keras 3 / TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mmctr_tf", "mmctr_tf.*", "run"]),
    install_requires=[
        # mmctr_tf/training/optimizers.py (LazyAdam) reads three private members of Keras' Adam: checked on 3.15
        "keras>=3.15,<3.16",
        "numpy>=1.26",
        "absl-py>=2.1",
        "tensorboard>=2.20",  # tensorflow-cpu 2.21 no longer pulls it in; Keras' TensorBoard callback needs it
        "matplotlib>=3.8",  # run.compare / run.inspect figures (Agg backend, no display needed)
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF}"],
        "gpu": [f"tensorflow[and-cuda]=={TF}"],
        # .ci/run: `ruff check .` (config in ruff.toml), then pytest (in parallel worker processes: pytest.ini)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.15,<0.18"],
    },
)
