"""jwtkeymap: map a JWT claim to an LLM gateway's virtual key, declaratively."""

__version__ = "0.1.0"
