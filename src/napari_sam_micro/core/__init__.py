"""Pure-numpy core: prompts, preprocessing, caching, masks, labels, metrics, export."""
