"""qla-agent: a local agent runtime for Qwen's hybrid linear-attention models."""

__version__ = "0.1.0"
