"""The front door: the `hllm` command and the end-to-end demo. It imports every other package and is
imported by none of them (tests/test_architecture.py enforces it)."""
