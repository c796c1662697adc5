"""Episode data: the typed episode structure, readers and the segment sampler."""

from dtrl.data.episodes import Episode, EpisodeDataset
from dtrl.data.readers import open_dataset, read_d4rl, read_minari

__all__ = ["Episode", "EpisodeDataset", "open_dataset", "read_d4rl", "read_minari"]
