"""What a person reads: the progression report, the seed comparison and every figure's
plotting. Imports tracking and core."""
