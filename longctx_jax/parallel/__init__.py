"""Context-parallel helpers: sequence layouts that balance causal work across devices."""
