"""The version of ``lkd_hf``: a leaf module (it imports nothing), read by the build (``pyproject.toml``) and by the
modules that record which ``lkd_hf`` wrote a file."""

__version__ = "0.1.0"
