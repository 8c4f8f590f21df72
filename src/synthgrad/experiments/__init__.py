"""Named, reproducible experiment presets built on the synthgrad core."""
