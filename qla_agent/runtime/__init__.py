"""Model definition, checkpoint loading, tokenizer and chat template, sessions and the engine."""
