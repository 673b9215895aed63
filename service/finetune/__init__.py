"""Fine-tuning on a folder of one's own photos, and the model directory it writes."""
