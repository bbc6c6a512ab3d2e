"""Reading cases (dataset layouts) and preprocessing them."""
