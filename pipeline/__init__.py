"""The spine: CLI, configs, geometry, provenance. Leaf modules import no other bevkd folder."""
