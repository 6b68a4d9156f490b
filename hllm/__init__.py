"""The front door: the `hllm` command and the end-to-end demo. It imports every other package and is
imported by none of them (tests/test_architecture.py enforces it)."""


def __getattr__(name: str):
    """`from hllm import Encoder`: the public Python API (feature_gen.api), imported on first use so
    `hllm --help` stays fast."""
    if name == "Encoder":
        from feature_gen.api import Encoder

        return Encoder
    raise AttributeError(f"module 'hllm' has no attribute {name!r}")
