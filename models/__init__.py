"""Model artifacts and the code that makes them (dataset, training, export, quantization)."""
