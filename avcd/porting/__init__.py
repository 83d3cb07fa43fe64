"""The authors' PyTorch weights into avcd: key mapping and conversion."""
