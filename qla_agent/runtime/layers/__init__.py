"""Building blocks of the hybrid decoder: norms, Gated DeltaNet, gated attention, MLP / MoE."""
