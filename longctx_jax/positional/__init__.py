"""Position encodings: rotary (with every scaling) and ALiBi."""
