"""Episode data: the typed episode structure, readers and the segment sampler."""

from dtrl.data.episodes import Episode, EpisodeDataset
from dtrl.data.readers import load_dataset, read_d4rl, read_minari

__all__ = ["Episode", "EpisodeDataset", "load_dataset", "read_d4rl", "read_minari"]
