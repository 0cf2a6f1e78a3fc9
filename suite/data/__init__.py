"""The data layer: dataset folder -> discovered files -> decoded, cached images -> splits; duplicates, audit."""
