"""Tools: tool-call parsers, the registry of JSON-schema functions, built-in tools and their workspace."""
