"""Images over HTTP for the shard builder: a pooled, retried, capped, in-order downloader."""
