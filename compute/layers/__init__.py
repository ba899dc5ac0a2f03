"""Numerical building blocks shared by the methods (numpy/scipy only, no torch)."""
