"""Privacy and communication: sketches, compression, differential privacy (opacus'
accountants), and gradient-leakage attacks."""
