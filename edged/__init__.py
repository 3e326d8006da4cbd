"""edged: an edge inference daemon for MQTT sensor streams."""

__version__ = "0.1.0"
